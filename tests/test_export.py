"""edgetl export: every format from the tiny run, verification that catches broken models,
atomic writes, the quantization doctor, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.cli import app, main
from edgetl.errors import UsageError
from edgetl.formats import DEFAULT_FORMATS, FORMATS, format_for_path, parse_formats

ALL = tuple(FORMATS)


def _export(run, out, **kw):
    from edgetl.export.api import ExportConfig, export_run

    return export_run(run, ExportConfig(out_dir=str(out), **kw))


@pytest.fixture(scope="module")
def all_formats(tiny_run, tmp_path_factory):
    """Every format (incl. QAT) exported once from the tiny run."""
    return _export(tiny_run, tmp_path_factory.mktemp("export_all"), formats=ALL)


# --------------------------------------------------------------------------- the format table


def test_format_table_is_consistent():
    assert set(DEFAULT_FORMATS) == {"tflite_fp32", "onnx_fp32"}
    names = {f.file_name("b") for f in FORMATS.values()}
    assert len(names) == len(FORMATS)  # no two formats write the same file
    for f in FORMATS.values():
        assert f.suffix in (".tflite", ".onnx") and f.runtime in ("litert", "onnxruntime")
        assert format_for_path(f"/x/efficientnet_lite0_{f.precision}{f.suffix}") == f


def test_unknown_format_lists_valid_ones():
    with pytest.raises(UsageError) as exc:
        parse_formats("tflite_fp32,tflite_int4")
    assert "tflite_int4" in str(exc.value) and "onnx_int8" in str(exc.value)


def test_config_flags_add_formats():
    from edgetl.export.api import ExportConfig

    names = [f.name for f in ExportConfig(int8=True, fp16=True, dynamic=True).resolve_formats()]
    assert names == ["tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8", "onnx_fp32", "onnx_int8"]
    assert [f.name for f in ExportConfig(formats=("onnx_int8",)).resolve_formats()] == ["onnx_int8"]
    with pytest.raises(UsageError):
        ExportConfig(io_type="int4").resolve_formats()


def test_quantization_named_constructors():
    from edgetl.quant import QuantizationConfig

    q = QuantizationConfig.for_int8(calib_samples=50)
    assert (q.mode, q.io_type, q.calib_samples, q.needs_calibration) == ("int8", "uint8", 50, True)
    assert QuantizationConfig.for_float16().mode == "float16"
    assert QuantizationConfig.for_dynamic().needs_calibration is False
    with pytest.raises(UsageError):
        QuantizationConfig.for_int8(io_type="int4")


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("fmt", ALL)
def test_each_format_exports_and_matches_keras(all_formats, fmt):
    art = all_formats.artifact(fmt)
    assert art is not None and art.error is None, art.error if art else fmt
    path = Path(art.path)
    assert path.is_file() and path.name == FORMATS[fmt].file_name("tiny_cnn")
    assert art.size_bytes == path.stat().st_size > 0
    v = art.verification
    assert v.n == all_formats.n_verify == 12
    assert v.agreement >= 90.0 and art.within_budget, (fmt, v)
    assert art.export_s > 0
    # every artifact also runs as written, outside the exporter
    from edgetl.export.verify import run_file
    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    run = load_run(all_formats.run_dir)
    px = prepare_batch(run.dataset().val.paths[:3], run.preprocessing)
    probs = run_file(path, px)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(-1), 1.0, atol=0.05)


def test_int8_tflite_takes_raw_uint8_pixels(all_formats):
    art = all_formats.artifact("tflite_int8")
    assert art.io["input_dtype"] == "uint8" and art.io["input_quantization"] == [1.0, 0]
    assert art.io["output_dtype"] == "uint8"
    assert art.quantization["calib_samples_used"] == 24  # all 24 training images (fewer than 300)


def test_float_int8_size_and_export_json(all_formats):
    out = Path(all_formats.out_dir)
    assert (out / "labels.txt").read_text().split() == ["alpha", "beta"]
    data = json.loads((out / "export.json").read_text())
    assert data["keras_accuracy"] == all_formats.keras_accuracy
    assert {a["format"] for a in data["artifacts"]} == set(ALL)
    for a in data["artifacts"]:
        assert {"size_bytes", "export_s", "verification", "drop", "within_budget"} <= set(a)
        assert {"accuracy", "agreement", "max_abs_diff"} <= set(a["verification"])
    assert not list(out.glob("*.tmp")) and not list(out.glob(".doctor-*"))
    lm = data["low_margin"]
    assert lm["images"] == data["n_verify"] and 0 <= lm["low_margin"] <= lm["images"] and lm["threshold"] == 0.05


def test_low_margin_share_counts_near_ties():
    from edgetl.export.verify import low_margin

    probs = np.array([[0.51, 0.49, 0.0], [0.9, 0.05, 0.05], [0.3, 0.33, 0.37], [0.2, 0.8, 0.0]])
    lm = low_margin(probs)
    assert (lm["low_margin"], lm["images"], lm["share_pct"]) == (2, 4, 50.0)
    assert low_margin(probs, threshold=0.01)["low_margin"] == 0 and low_margin(np.zeros((0, 3))) is None


def test_qat_reported_next_to_ptq(all_formats):
    ptq, qat = all_formats.artifact("tflite_int8"), all_formats.artifact("tflite_qat")
    assert qat.path.endswith("tiny_cnn_qat_int8.tflite") and ptq.path.endswith("tiny_cnn_int8.tflite")
    assert qat.verification.accuracy is not None and ptq.verification.accuracy is not None
    assert any("QAT:" in n for n in qat.notes)


def test_onnx_loads_with_optimizations_and_passes_checker(all_formats):
    import onnx

    from edgetl.runtime.onnx_runner import OnnxRunner

    for fmt in ("onnx_fp32", "onnx_int8"):
        path = all_formats.artifact(fmt).path
        onnx.checker.check_model(onnx.load(path))
        sess = OnnxRunner(path).session
        assert sess.get_inputs()[0].shape[1:] == [32, 32, 3]
    int8 = onnx.load(all_formats.artifact("onnx_int8").path)
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)


# --------------------------------------------------------------------------- verification catches broken models


def _negate_last_dense(src: Path, dst: Path) -> None:
    """An ONNX file with the classifier's weights negated: the predicted class flips."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = [i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 2]
    target = inits[-1]
    target.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(target), target.name))
    onnx.save(model, str(dst))


def test_verification_fails_for_perturbed_weights(all_formats, tmp_path):
    from edgetl.export.verify import compare, run_file
    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    run = load_run(all_formats.run_dir)
    val = run.dataset().val
    px = prepare_batch(val.paths, run.preprocessing)
    ref = run_file(all_formats.artifact("onnx_fp32").path, px)
    broken = tmp_path / "broken.onnx"
    _negate_last_dense(Path(all_formats.artifact("onnx_fp32").path), broken)
    v = compare(run_file(broken, px), ref, np.array(val.labels))
    assert v.agreement < 50 and v.accuracy < 50 and v.max_abs_diff > 0.5
    # ... and a different model (probabilities swapped) is caught too
    v2 = compare(ref[:, ::-1], ref, np.array(val.labels))
    assert v2.agreement == 0.0


def _break_onnx_quantizer(monkeypatch, tmp_path) -> None:
    """Make edgetl's ONNX quantizer return a model whose last Dense layer is negated."""
    import edgetl.export.onnx as onnx_export

    real = onnx_export.quantize

    def bad_quantize(proto, calib, quant):
        model, notes = real(proto, calib, quant)
        src, dst = tmp_path / "q.onnx", tmp_path / "qb.onnx"
        import onnx

        onnx.save(model, str(src))
        _negate_last_dense(src, dst)
        return onnx.load(str(dst)), notes

    monkeypatch.setattr(onnx_export, "quantize", bad_quantize)


def test_broken_int8_is_flagged_and_strict_fails(tiny_run, tmp_path, monkeypatch):
    """A quantizer that produces a wrong model: the artifact is over budget, --strict exits 1."""
    _break_onnx_quantizer(monkeypatch, tmp_path)
    out = tmp_path / "out"
    res = _export(tiny_run, out, formats=("onnx_int8",), doctor=False)
    art = res.artifact("onnx_int8")
    assert art.within_budget is False and art.drop > 1.0
    assert any("over budget" in w and "agreement" in w for w in res.warnings)
    code = main([ "export", str(tiny_run), "--formats", "onnx_int8", "--out", str(out), "--strict"])
    assert code == 1  # the automatic doctor also ran, and every remedy used the broken quantizer
    data = json.loads((out / "export.json").read_text())
    assert data["doctor"] and data["doctor"][0]["winner"] is None
    assert len(data["doctor"][0]["attempts"]) >= 3


def test_doctor_reports_every_attempt(tiny_run, tmp_path):
    """Explicit doctor: 8-bit remedies first (selective float, calibration, rounding, ONNX calibrations), every one
    verified, timed when within budget, and two remedies that make the same model are marked identical."""
    res = _export(tiny_run, tmp_path, formats=("tflite_int8", "onnx_int8"), doctor=True, calib_samples=8,
                  max_drop=100.0, min_agreement=0.0)
    by_target = {d["target"]: d for d in res.doctor}
    assert set(by_target) == {"tflite_int8", "onnx_int8"}
    tfl = [a["remedy"] for a in by_target["tflite_int8"]["attempts"]]
    # pure 8-bit remedies (rounding, calibration) first, then the ones that keep layers in float
    first_float = next(i for i, a in enumerate(by_target["tflite_int8"]["attempts"]) if a["float_nodes"])
    assert tfl[0].startswith("round-to-nearest") and any(r.startswith("more calibration") for r in tfl[:first_float])
    assert all(a["float_nodes"] for a in by_target["tflite_int8"]["attempts"][first_float:])
    nearest = [a for a in by_target["tflite_int8"]["attempts"] if a["remedy"].startswith("round-to-nearest")]
    assert len(nearest) == 1 and "identical_to" not in nearest[0]  # GPTQ and nearest rounding: two different files
    # int16x8 and QAT only when no 8-bit candidate meets the budget (here every candidate does)
    assert not any("int16x8" in r or "quantization-aware" in r for r in tfl)
    onx = [a["remedy"] for a in by_target["onnx_int8"]["attempts"]]
    assert any("per-tensor" in r for r in onx) and any("Entropy" in r for r in onx) and any("Percentile" in r for r in onx)
    for d in res.doctor:
        assert d["winner"] is not None and d["winner"]["format"] == d["target"]
        assert d["original"]["p50_ms"] > 0
        for a in d["attempts"]:
            assert a["error"] is None
            if "identical_to" not in a:
                assert a["accuracy"] is not None and a["p50_ms"] > 0
        # selective float keeps the named layers and only those
        sel = [a for a in d["attempts"] if "worst layer" in a["remedy"] and "identical_to" not in a]
        assert sel and all(a["float_nodes"] for a in sel)
    # the quantization report of every int8 file, next to it
    for fmt in ("tflite_int8", "onnx_int8"):
        rows = json.loads((tmp_path / f"quant_report_{fmt}.json").read_text())
        assert rows and any("report" in n for n in res.artifact(fmt).notes)
    assert not list(Path(tmp_path).glob(".doctor-*"))


def test_remedies_make_different_models(tiny_run, tmp_path):
    """MinMax, Entropy and Percentile calibration, and per-tensor weights, are four different ONNX files."""
    res = _export(tiny_run, tmp_path, formats=("onnx_int8",), doctor=True, calib_samples=8, max_drop=100.0,
                  min_agreement=0.0, quant_report=False)
    attempts = res.doctor[0]["attempts"]
    calib = [a for a in attempts if any(w in a["remedy"] for w in ("Entropy", "Percentile", "per-tensor"))]
    assert len(calib) == 3 and not [a for a in calib if "identical_to" in a], calib


def test_agreement_budget_triggers_the_doctor(tiny_run, tmp_path, monkeypatch):
    """An int8 file that changes predictions is over budget even when --max-drop would allow its accuracy."""
    _break_onnx_quantizer(monkeypatch, tmp_path)
    res = _export(tiny_run, tmp_path / "out", formats=("onnx_int8",), max_drop=100.0, quant_report=False)
    art = res.artifact("onnx_int8")
    assert art.drop <= 100.0 and art.verification.agreement < 99.0
    assert art.within_budget is False and res.doctor and res.doctor[0]["target"] == "onnx_int8"
    assert res.doctor[0]["winner"] is None and art in res.budget_failures


def test_doctor_time_limit_lists_untried_remedies(tiny_run, tmp_path, monkeypatch):
    """No remedy starts once the doctor's time is used up; the untried ones are named in export.json."""
    from edgetl.errors import UsageError
    from edgetl.export.api import AUTO_DOCTOR_TIME, ExportConfig

    assert ExportConfig().doctor_seconds() == AUTO_DOCTOR_TIME and ExportConfig(doctor=True).doctor_seconds() is None
    assert ExportConfig(doctor=True, doctor_time=30).doctor_seconds() == 30.0
    with pytest.raises(UsageError, match="--doctor-time"):
        ExportConfig(doctor_time=0).resolve_formats()
    _break_onnx_quantizer(monkeypatch, tmp_path)
    res = _export(tiny_run, tmp_path / "out", formats=("onnx_int8",), max_drop=100.0, quant_report=False, doctor_time=1e-6)
    (d,) = res.doctor
    assert d["attempts"] == [] and d["winner"] is None
    assert any("Percentile" in r for r in d["not_tried"]) and "time limit" in d["note"]
    # Entropy calibration only with --doctor (it collapsed agreement on sign_digits and used the time limit)
    assert not any("Entropy" in r for r in d["not_tried"])
    assert json.loads((tmp_path / "out" / "export.json").read_text())["doctor"][0]["not_tried"] == d["not_tried"]


def test_doctor_reaches_qat_when_post_training_remedies_miss(tiny_run, tmp_path, monkeypatch):
    """Automatic doctor, every post-training candidate over budget (test hook: the budget check fails and the
    post-training remedies are skipped): QAT is tried with its time budget stated, after the doctor's own time
    limit is used up, and verified on the selection images like every remedy; int16x8 only after it."""
    import edgetl.export.artifacts as artifacts
    import edgetl.export.doctor as doctor

    real = doctor._remedies
    seen: list[list[str]] = []

    def only_fallbacks(ctx, art, stage):
        out = real(ctx, art, stage)
        seen.append([r for r, _, _ in out])
        return [r for r in out if r[1] == "tflite_qat"]

    monkeypatch.setattr(doctor, "_remedies", only_fallbacks)
    monkeypatch.setattr(artifacts, "within_budget", lambda art, config: False)
    monkeypatch.setattr(artifacts, "QAT_CALIB_IMAGES", 5)
    res = _export(tiny_run, tmp_path / "out", formats=("tflite_int8",), calib_samples=8, quant_report=False,
                  qat_time=3.0, qat_samples=20, doctor_time=1e-6)
    (d,) = res.doctor
    assert seen[-1][0] == doctor.QAT_REMEDY and "int16x8" in seen[-1][1]  # QAT is the last 8-bit remedy, first fallback
    (qat,) = [a for a in d["attempts"] if a["remedy"] == doctor.QAT_REMEDY]
    assert qat["format"] == "tflite_qat" and qat["error"] is None and d["qat_budget_s"] == 3.0
    assert qat["agreement"] is not None and qat["within_budget"] is False  # verified on the selection half
    assert any("3 s budget" in n and "distilled from the float model" in n for n in qat["notes"]), qat["notes"]
    # whole batches of 16 only (20 sampled: a last batch of 4 would trace the training step again), and the
    # conversion calibrates only what tfmot left float, on a few images
    assert any("of 16 images)" in n for n in qat["notes"]), qat["notes"]
    assert any(n.startswith("QAT conversion: 5 calibration images") for n in qat["notes"]), qat["notes"]
    assert d["winner"] is None and d["selection"]["images"] > 0 and d["objective"] == "accuracy"


@pytest.mark.parametrize("case", ["chance", "clear"])
def test_an_all_8bit_remedy_must_beat_a_plain_file_that_missed(tiny_run, tmp_path, monkeypatch, case):
    """The plain file missed the budget; min/max activation ranges (an all-8-bit remedy) is within it. It is shipped
    only when, on the selection images where the two files differ, it fixes significantly more of the
    plain file's disagreements than it adds (sign test): 2 fixed / 1 added is chance, all fixed is not."""
    import edgetl.export.artifacts as artifacts
    import edgetl.export.doctor as doctor

    real_remedies, real_verify = doctor._remedies, doctor._verify

    def minmax_only(ctx, art, stage):
        return [r for r in real_remedies(ctx, art, stage) if r[0] == doctor.MINMAX_REMEDY] if stage == 0 else []

    def verify(ctx, art):  # the real verification, then which selection images agree, set by the test
        real_verify(ctx, art)
        n = len(art.agrees)
        if art.remedy is None:
            art.agrees = np.zeros(n, bool) if case == "clear" else np.r_[np.zeros(2, bool), np.ones(n - 2, bool)]
        elif case == "clear":
            art.agrees = np.ones(n, bool)
        else:
            art.agrees = np.r_[np.ones(2, bool), np.zeros(1, bool), np.ones(n - 3, bool)]
        return art

    monkeypatch.setattr(doctor, "_remedies", minmax_only)
    monkeypatch.setattr(doctor, "_verify", verify)
    monkeypatch.setattr(artifacts, "within_budget", lambda art, config: art.remedy is not None)
    res = _export(tiny_run, tmp_path / "out", formats=("tflite_int8",), calib_samples=8, quant_report=False)
    (d,) = res.doctor
    (att,) = d["attempts"]
    n = d["selection"]["images"]
    assert n >= 5 and att["within_budget"] is True
    if case == "chance":
        assert att["vs_plain"] == {"fixed": 2, "broken": 1, "p_value": 0.5, "significant": False}
        assert d["winner"] is None and res.artifact("tflite_int8").remedy is None
    else:
        assert att["vs_plain"]["fixed"] == n and att["vs_plain"]["broken"] == 0 and att["vs_plain"]["significant"]
        assert d["winner"]["remedy"] == doctor.MINMAX_REMEDY and res.artifact("tflite_int8").remedy == d["winner"]["remedy"]


def test_round_to_nearest_is_tried_only_when_asked_for_every_remedy():
    """Round-to-nearest never shipped in the automatic doctor's recorded attempts and cost up to 84 s, so only
    --doctor tries it (as with ORT's Entropy calibration); the other remedies are the same in both modes."""
    from types import SimpleNamespace as NS

    from edgetl.export import doctor
    from edgetl.export.api import ExportConfig

    rows = [{"name": "stem/conv", "op": "CONV_2D"}, {"name": "head/dense", "op": "FULLY_CONNECTED"}]
    for fmt in ("tflite_int8", "onnx_int8"):
        names = {}
        for explicit in (None, True):
            cfg = ExportConfig(doctor=explicit)
            ctx = NS(config=cfg, train_samples=[None] * 50, reports={fmt: rows}, model=NS(count_params=lambda: 10**6))
            art = NS(format=fmt, quantization={"calib_samples_used": 20}, size_bytes=10**5)
            names[explicit] = [r for r, _, _ in doctor._remedies(ctx, art, 0)]
        auto, every = names[None], names[True]
        assert not any(r.startswith("round-to-nearest") for r in auto), (fmt, auto)
        assert any(r.startswith("round-to-nearest") for r in every), (fmt, every)
        assert [r for r in every if not r.startswith(("round-to-nearest", "Entropy"))] == auto


def test_sign_test_p_values():
    from edgetl.export.doctor import sign_test

    assert sign_test(0, 0) == 1.0 and sign_test(2, 0) == 0.25 and sign_test(4, 0) == 0.0625
    assert sign_test(5, 0) == 0.03125 and sign_test(6, 1) == 8 / 128 and sign_test(1, 3) == 15 / 16


def test_doctor_balanced_objective_uses_balanced_accuracy():
    from edgetl.export.doctor import balanced_accuracy

    y = np.array([0, 0, 0, 0, 1])
    probs = np.eye(2)[[0, 0, 0, 0, 0]]  # 80 % accuracy, but class 1 never recalled
    assert balanced_accuracy(probs, y) == 50.0 and balanced_accuracy(np.eye(2)[y], y) == 100.0


def test_doctor_cost_estimates():
    """What the doctor expects a remedy to cost: measured per kind, scaled by calibration images."""
    from types import SimpleNamespace as NS

    from edgetl.export.doctor import _Costs
    from edgetl.quant import QuantizationConfig

    q = QuantizationConfig.for_int8(calib_samples=300)
    art = NS(export_s=90.0, verify_s=5.0, format="tflite_int8", quantization={"calib_samples_used": 300})
    ctx = NS(calibrated={"cached": b""}, config=NS(calib_samples=300, qat_samples=300, qat_epochs=1, qat_time=120.0))
    c = _Costs(ctx, art)
    assert c.estimate("keep 1 worst layer in float", q.with_(float_nodes=("a",))) == 10.0  # calibration cached
    assert c.estimate("Entropy calibration", q) == 95.0  # another conversion: the original's time
    assert c.estimate("more calibration images (1000)", q.with_(calib_samples=1000)) == 95.0 * 1000 / 300
    assert c.estimate("quantization-aware training", None) == 95.0 + 120.0  # training bounded by qat_time
    c.record("more calibration images (600)", q.with_(calib_samples=600), 60.0)  # 0.1 s per image measured
    assert c.estimate("more calibration images (1000)", q.with_(calib_samples=1000)) == 100.0
    c.record("Entropy calibration", q, 30.0)
    assert c.estimate("per-tensor weights", q) == 30.0
    onnx = _Costs(NS(calibrated={}, config=ctx.config), NS(**{**vars(art), "format": "onnx_int8"}))
    assert onnx.estimate("keep 1 worst layer in float", q.with_(float_nodes=("a",))) == 95.0


def test_doctor_calls_a_candidate_faster_only_beyond_the_timing_noise(monkeypatch):
    """Paired, interleaved timing with a stated margin: within it, the higher selection agreement wins,
    then pure int8, then fewer float layers; a candidate faster beyond it wins (int16x8 never beats int8)."""
    from types import SimpleNamespace as NS

    import numpy as np

    from edgetl.export import doctor
    from edgetl.runtime.timing import FASTER_MARGIN, PairedTiming

    def art(name, agree, n_float=0):
        return NS(remedy=name, path=name, latency=None, verification=NS(agreement=agree),
                  quantization={"float_nodes": ["x"] * n_float})

    blocks = {}
    monkeypatch.setattr(doctor, "paired_latency", lambda paths, px: PairedTiming([blocks[p] for p in paths], 5, 1))
    ctx = NS(val_px=np.zeros((1, 4, 4, 3), np.uint8))
    gptq, nearest, floats = art("plain", 99.5), art("round-to-nearest", 99.5), art("keep 3 worst layers in float", 99.5, 3)
    # the same graph timed twice: 2 % apart by noise, inside the margin: the earlier, pure-int8 candidate stays
    blocks.update({"plain": [10.2, 10.1, 10.3], "round-to-nearest": [10.0, 9.9, 10.1], "keep 3 worst layers in float": [10.0, 10.0, 10.0]})
    report = {}
    assert doctor._choose(ctx, [gptq, nearest, floats], report) is gptq
    assert report["timing"]["faster_margin"] == FASTER_MARGIN and report["timing"]["repeats"] == 3
    assert set(report["timing"]["within_noise_of_fastest"]) == {"plain", "round-to-nearest", "keep 3 worst layers in float"}
    # at equal speed a higher agreement wins over simplicity
    better = art("keep 1 worst layer in float", 99.9, 1)
    blocks["keep 1 worst layer in float"] = [10.1, 10.0, 10.2]
    assert doctor._choose(ctx, [gptq, better], {}) is better
    # faster beyond the margin wins; a 30x slower int16x8 never does
    blocks.update({"fast": [8.0, 8.1, 7.9], "int16x8": [300.0, 310.0, 305.0]})
    fast, slow = art("fast", 99.2, 3), art("int16x8", 100.0)
    assert doctor._choose(ctx, [gptq, fast, slow], {}) is fast


def test_doctor_selects_on_one_half_and_reports_on_the_other(tiny_run, tmp_path):
    """export.json's doctor entry: selection and report figures, image counts, disjoint images."""
    res = _export(tiny_run, tmp_path, formats=("tflite_int8",), doctor=True, calib_samples=8, max_drop=100.0,
                  min_agreement=0.0, quant_report=False, rounding="nearest")
    (d,) = res.doctor
    sel, rep = d["selection"], d["report"]
    assert sel["images"] + rep["images"] == res.n_verify and sel["images"] > 0 and rep["images"] > 0
    assert "first half" in sel["split"] and "second half" in rep["split"]
    for part in (sel, rep):
        assert part["winner"]["agreement"] is not None and part["original"]["agreement"] is not None
    doc = json.loads((tmp_path / "export.json").read_text())
    assert doc["doctor"][0]["report"]["images"] == rep["images"]


def test_doctor_reports_on_the_test_split_when_there_is_one(tmp_path, tiny_run):
    from types import SimpleNamespace as NS

    import numpy as np

    from conftest import make_image_folder
    from edgetl.data import load_dataset
    from edgetl.export.doctor import _selection_and_report
    from edgetl.run import load_run

    run = load_run(tiny_run)
    data = make_image_folder(tmp_path / "d", n_train=2, n_val=3, n_test=2)
    ds = load_dataset(data)
    y = np.array([0, 0, 0, 1, 1, 1])
    ctx = NS(val_px=np.zeros((6, 32, 32, 3), np.uint8), val_y=y, ref=np.eye(2)[y], test_samples=list(ds.test.samples),
             config=NS(verify_samples=None, seed=0), run=run, model=run.load_model())
    sel_ctx, rep = _selection_and_report(ctx)
    assert sel_ctx is ctx and rep["split"] == "test" and len(rep["px"]) == 4 and rep["ref"].shape == (4, 2)
    sel_ctx, rep = _selection_and_report(NS(**{**vars(ctx), "test_samples": []}))
    assert list(sel_ctx.val_y) == [0, 0, 1, 1] and list(rep["y"]) == [0, 1]  # alternate files of each class


def test_slow_fallback_is_timed_and_dropped_before_verification(monkeypatch):
    """Automatic mode times a fallback (int16x8) before verifying it: one over MAX_FALLBACK_SLOWDOWN x
    the plain int8 file is recorded with its latency and not verified; --doctor and 8-bit remedies always are."""
    from types import SimpleNamespace as NS

    import numpy as np

    from edgetl.export import doctor

    said = []
    ctx = NS(val_px=np.zeros((1, 4, 4, 3), np.uint8), say=said.append)
    plain = NS(latency={"p50_ms": 10.0})

    def cand():
        return NS(remedy="int16x8 (16-bit activations, 8-bit weights)", format="tflite_int16x8", error=None,
                  latency=None, path="x.tflite", export_s=1.0, size_bytes=5, notes=[])

    p50 = {"v": 300.0}
    monkeypatch.setattr(doctor, "quick_latency", lambda path, px: {"p50_ms": p50["v"]})
    report: dict = {"attempts": []}
    assert doctor._too_slow(ctx, plain, cand(), 1, False, report)
    (entry,) = report["attempts"]
    assert entry["p50_ms"] == 300.0 and "30x" in entry["skipped"] and "not verified" in entry["skipped"]
    assert said and "300.0 ms" in said[0]
    assert not doctor._too_slow(ctx, plain, cand(), 1, True, report)  # --doctor: verified anyway
    assert not doctor._too_slow(ctx, plain, cand(), 0, False, report)  # 8-bit remedies: always verified
    p50["v"] = 15.0
    assert not doctor._too_slow(ctx, plain, cand(), 1, False, report)  # 1.5x: within the limit
    assert len(report["attempts"]) == 1
    # a slow single timing (a busy moment of the shared CPU) is confirmed side by side before dropping
    p50["v"] = 300.0
    plain.path = "plain.tflite"
    paired = {"blocks": [[10.0, 10.0, 10.0], [12.0, 12.0, 12.0]]}
    monkeypatch.setattr(doctor, "paired_latency", lambda paths, px: doctor_timing(paired["blocks"]))
    c = cand()
    assert not doctor._too_slow(ctx, plain, c, 1, False, report) and c.latency["paired_ratio_to_plain"] == 1.2
    paired["blocks"] = [[10.0, 10.0, 10.0], [31.0, 30.0, 29.0]]
    assert doctor._too_slow(ctx, plain, cand(), 1, False, report) and "3x" in report["attempts"][-1]["skipped"]


def doctor_timing(blocks):
    from edgetl.runtime.timing import PairedTiming

    return PairedTiming(blocks, 5, 1)


# --------------------------------------------------------------------------- atomic writes


def test_interrupted_write_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    import edgetl.report as report

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", boom)
    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match="No space left"):  # export.json cannot be written either
        _export(tiny_run, tmp_path, formats=("tflite_fp32",), verify_samples=2)
    assert not (tmp_path / "tiny_cnn_fp32.tflite").exists()
    assert not (tmp_path / "export.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_previous_file_intact(tiny_run, tmp_path, monkeypatch):
    """A crash mid-write (after some bytes) never replaces the previous good file."""
    import os

    import edgetl.report as report

    final = tmp_path / "tiny_cnn_fp32.tflite"
    final.write_bytes(b"previous")
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        _export(tiny_run, tmp_path, formats=("tflite_fp32",), verify_samples=2)
    assert final.read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- bad inputs, CLI


def _cli(*args):
    res = CliRunner().invoke(app, list(args))
    return res


def test_cli_default_export(tiny_run, tmp_path, capsys):
    code = main(["export", str(tiny_run), "--out", str(tmp_path), "--verify-samples", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "tflite_fp32" in out and "onnx_fp32" in out and "keras (reference)" in out
    assert "near-ties" not in out  # the low-margin line only beside int8 files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "labels.txt", "tiny_cnn_fp32.onnx", "tiny_cnn_fp32.tflite"]


def test_cli_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run directory not found") and "\n" not in err

    assert main(["export", str(tiny_run), "--formats", "tflite_fp32,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown export format 'bogus'" in err and "tflite_int8" in err and "\n" not in err

    assert main(["export", str(tiny_run), "--io-type", "int4"]) == 2
    assert "--io-type" in capsys.readouterr().err

    empty = tmp_path / "run_without_model"
    empty.mkdir()
    shutil.copy(tiny_run / "labels.txt", empty)
    shutil.copy(tiny_run / "config.json", empty)
    assert main(["export", str(empty)]) == 1
    err = capsys.readouterr().err.strip()
    assert "model.keras is missing" in err and "\n" not in err


def test_calibration_without_images(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["data_dir"] = str(tmp_path / "gone")
    cfg.pop("data", None)
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["export", str(run), "--int8"]) == 1
    err = capsys.readouterr().err.strip()
    assert "calibration needs the run's training images" in err and "\n" not in err
    # float formats still export, loudly unverified
    assert main(["export", str(run), "--formats", "tflite_fp32"]) == 0
    assert "NOT verified" in capsys.readouterr().err
    assert (run / "export" / "tiny_cnn_fp32.tflite").is_file()


# --------------------------------------------------------------------------- real backbones (weights=None)


#: the registry backbones are built at 96 px here: the graph (what converts) is the same at any size, and
#: 224 px took 48 s of the suite for EfficientNetB0 alone
BACKBONE_TEST_SIZE = 96


def _backbone_run(tmp_path: Path, image_folder: Path, name: str) -> Path:
    import keras

    from edgetl import __version__
    from edgetl.models import build, get_spec

    spec = get_spec(name).at_size(BACKBONE_TEST_SIZE)
    base = build(spec, weights=None)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    out = keras.layers.Dense(2, activation="softmax", name="probs", dtype="float32")(x)
    run = tmp_path / name
    run.mkdir()
    keras.Model(base.input, out).save(run / "model.keras")
    (run / "labels.txt").write_text("alpha\nbeta\n")
    cfg = {"edgetl_version": __version__, "backbone": name, "preprocessing": spec.preprocessing.to_dict(),
           "labels": ["alpha", "beta"], "data_dir": str(image_folder), "val_split": 0.2, "seed": 0}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize("backbone", ["mobilenet_v2_035", "efficientnet_b0"])  # Lite0: tests/test_real_path.py
def test_registry_backbones_export_int8_and_onnx(tmp_path, image_folder, backbone):
    """Every backbone family in the registry converts (random weights: this checks the graph, not accuracy).

    EfficientNetB0 converts to int8 TFLite only: its ONNX conversion alone took 18 s of the suite, and the
    EfficientNet family's ONNX path (squeeze-excite aside) is exercised on Lite0 in tests/test_real_path.py."""
    run = _backbone_run(tmp_path, image_folder, backbone)
    formats = ("tflite_int8", "onnx_fp32") if backbone == "mobilenet_v2_035" else ("tflite_int8",)
    res = _export(run, run / "export", formats=formats, calib_samples=6, verify_samples=4, doctor=False,
                  quant_report=False)
    for fmt in formats:
        art = res.artifact(fmt)
        assert art.error is None, art.error
        assert art.verification.n == 4
    if "onnx_fp32" in formats:
        assert res.artifact("onnx_fp32").verification.max_abs_diff < 1e-3
    # raw uint8 pixels in: scale 1 / zero point 0, or the model's exact leading rescale carried by the
    # input quantization (EfficientNetB0 starts with Rescaling(1/255): scale 1/255, zero point 0)
    expect = {"mobilenet_v2_035": [1.0, 0], "efficientnet_b0": [pytest.approx(1 / 255), 0]}[backbone]
    assert res.artifact("tflite_int8").io["input_quantization"] == expect


def test_mobilenet_v2_rebuilds_in_tf_keras_for_qat(tmp_path, image_folder):
    """The Keras 3 -> tf_keras rebuild that QAT needs works on a real backbone (same outputs)."""
    from edgetl.export.qat import quantize_aware, to_tf_keras
    from edgetl.run import load_run

    run = load_run(_backbone_run(tmp_path, image_folder, "mobilenet_v2_035"))
    model = run.load_model()
    tk = to_tf_keras(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, BACKBONE_TEST_SIZE, BACKBONE_TEST_SIZE, 3)).astype(np.float32)
    assert np.max(np.abs(tk.predict(x, verbose=0) - model.predict(x, verbose=0))) < 1e-4
    qat, _notes = quantize_aware(tk)
    assert qat.predict(x, verbose=0).shape == (2, 2)


def test_a_remedy_over_the_size_ratio_is_dropped_before_verification():
    """Automatic mode measures the candidate's real size against the written fp32 file of its family:
    one over MAX_SIZE_RATIO (the float-layer estimate misses per-tensor overhead) is recorded, not verified;
    --doctor verifies it anyway; without an fp32 file the parameter count stands in; where the plain int8
    file is over the ratio itself (a tiny model's overhead) the ratio does not apply."""
    from types import SimpleNamespace as NS

    from edgetl.export import doctor

    said: list[str] = []
    ctx = NS(say=said.append, model=NS(count_params=lambda: 1000))
    result = NS(artifacts=[NS(format="tflite_fp32", error=None, size_bytes=10_000),
                           NS(format="onnx_fp32", error=None, size_bytes=20_000)])

    def cand(size, fmt="tflite_int8"):
        return NS(remedy="keep 8 worst layers in float", format=fmt, error=None, export_s=1.0, size_bytes=size)

    plain = NS(size_bytes=2_900)
    report: dict = {"attempts": []}
    assert doctor._too_big(ctx, result, plain, cand(4_050), False, report)
    (entry,) = report["attempts"]
    assert "0.405 of the float32 file" in entry["skipped"] and said
    assert not doctor._too_big(ctx, result, plain, cand(4_000), False, report)           # exactly 0.40: fine
    assert not doctor._too_big(ctx, result, plain, cand(4_050), True, report)            # --doctor: verified anyway
    assert not doctor._too_big(ctx, result, plain, cand(4_050, "onnx_int8"), False, report)  # vs the ONNX fp32 file
    assert doctor._too_big(ctx, NS(artifacts=[]), NS(size_bytes=1_000), cand(1_700), False, report)  # 4 B x 1000 params
    assert not doctor._too_big(ctx, result, NS(size_bytes=4_500), cand(5_000), False, report)  # tiny model: plain over already
    assert len(report["attempts"]) == 2


def test_float_layers_are_chosen_within_the_size_ratio_with_a_margin():
    """The float-layer candidates skip a layer whose weights would take the file past 0.40 of the fp32 size,
    counting each float weight at FLOAT_WEIGHT_BYTES (3 bytes by count, plus measured overhead)."""
    from types import SimpleNamespace as NS

    from edgetl.export import doctor

    sizes = {"a": 100, "b": 90, "c": 10}
    ctx = NS(model=NS(count_params=lambda: 1000, get_layer=lambda n: NS(count_params=lambda: sizes[n])))
    art = NS(size_bytes=1000)  # fp32 4000 bytes: room (1600 - 1000) / 3.3 = 181 weights (200 at 3 bytes)
    assert doctor.FLOAT_WEIGHT_BYTES > 3
    assert doctor._affordable(ctx, art, ["a", "b", "c"]) == ["a", "c"]


@pytest.mark.parametrize("start", ["gptq", "float"])
def test_qat_starts_from_the_gptq_rounded_weights(tiny_run, tmp_path, monkeypatch, start):
    """The QAT fine-tune starts where post-training quantization ended: the model rebuilt for tfmot is the
    export's GPTQ-rounded one (BN folded, every kernel on the converter's per-channel grid, the same
    object the int8 file was converted from), not the float model. QAT_START="float" is the old start."""
    import edgetl.export.qat as Q
    from edgetl.run import load_run

    seen = []
    real = Q.to_tf_keras
    monkeypatch.setattr(Q, "to_tf_keras", lambda m: seen.append(m) or real(m))
    monkeypatch.setattr(Q, "QAT_START", start)
    res = _export(tiny_run, tmp_path, formats=("tflite_int8", "tflite_qat"), calib_samples=8, qat_samples=16,
                  quant_report=False, doctor=False)
    assert res.artifact("tflite_qat").error is None and res.artifact("tflite_qat").verification.agreement is not None
    (model,) = seen
    kernels = [l.get_weights()[0] for l in model.layers if type(l).__name__ in ("Conv2D", "Dense")]
    assert kernels and not any(type(l).__name__ == "BatchNormalization" for l in model.layers)

    def off_grid(k):  # per output channel: distance of w / (max|w| / 127) from an integer
        k2 = k.reshape(-1, k.shape[-1])
        steps = k2 / (np.abs(k2).max(axis=0) / 127)
        return float(np.abs(steps - np.round(steps)).max())

    worst = max(off_grid(k) for k in kernels)
    # both starts fold the same BatchNormalization layers, and the QAT note says how many
    n_bn = sum(type(l).__name__ == "BatchNormalization" for l in load_run(tiny_run).load_model().layers)
    assert any(f", {n_bn} BN folded," in n for n in res.artifact("tflite_qat").notes), res.artifact("tflite_qat").notes
    if start == "gptq":
        assert worst < 1e-3, worst
        assert any(n.startswith("QAT starts from the GPTQ-rounded weights") for n in res.artifact("tflite_qat").notes)
    else:
        assert worst > 0.1, worst  # float weights: nowhere near the grid


def test_automatic_qat_trains_for_what_is_left_of_the_export_time():
    """Automatic mode: QAT trains for at most what is left of AUTO_EXPORT_TIME (from the export's start, less
    QAT_RESERVE for its conversion and verification), never less than QAT_MIN_TIME nor more than qat_time;
    --doctor gives it qat_time whatever the clock says."""
    import time
    from types import SimpleNamespace as NS

    from edgetl.export import doctor
    from edgetl.export.doctor import AUTO_EXPORT_TIME, QAT_MIN_TIME, QAT_RESERVE

    def ctx(elapsed):
        return NS(config=NS(qat_time=120.0), started=time.perf_counter() - elapsed)

    assert doctor._qat_seconds(ctx(0.0), False) == (120.0, "")
    secs, why = doctor._qat_seconds(ctx(200.0), False)
    assert AUTO_EXPORT_TIME - 200 - QAT_RESERVE - 1 < secs <= AUTO_EXPORT_TIME - 200 - QAT_RESERVE
    assert "what is left of the automatic export's 360 s" in why and "--doctor gives it 120 s" in why
    assert doctor._qat_seconds(ctx(1000.0), False)[0] == QAT_MIN_TIME
    assert doctor._qat_seconds(ctx(1000.0), True) == (120.0, "")
