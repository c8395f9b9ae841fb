"""One artifact: convert, add metadata, write atomically, verify with its own runtime.

What ``export_run`` (:mod:`edgetl.export.api`) and the quantization doctor (:mod:`edgetl.export.doctor`)
both need, so that neither imports the other: the export's shared state (:class:`ExportContext`),
:func:`make_artifact`, :func:`verify_artifact` and the per-layer :func:`layer_report`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.errors import EdgetlError, one_line
from edgetl.export.metadata import ModelFacts
from edgetl.export.verify import Verification, compare, run_file
from edgetl.formats import ExportFormat
from edgetl.quant import QuantizationConfig
from edgetl.report import atomic_write_bytes


@dataclass
class Artifact:
    """One exported file and how it compares with the float model."""

    format: str
    path: str | None
    precision: str
    runtime: str
    size_bytes: int = 0
    export_s: float = 0.0
    verify_s: float = 0.0
    verification: Verification | None = None
    drop: float | None = None  # accuracy points lost vs the Keras model (negative = gained)
    within_budget: bool | None = None
    quantization: dict[str, Any] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    remedy: str | None = None  # set when the quantization doctor made this file
    latency: dict[str, Any] | None = None  # the doctor's short timing (bench's timer), when it timed this file
    portability: dict[str, Any] | None = None  # ONNX int8: agreement under ONNX Runtime's default session options
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    #: per verification image, whether the file's top-1 equals the float model's (not written to export.json)
    agrees: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.within_budget is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("agrees", None)
        d["verification"] = self.verification.to_dict() if self.verification else None
        d["size_mb"] = round(self.size_bytes / 1e6, 3)
        return d

    def row(self) -> dict[str, Any]:
        v = self.verification
        return {
            "format": self.format,
            "file": Path(self.path).name if self.path else "-",
            "size_MB": round(self.size_bytes / 1e6, 3) if self.size_bytes else None,
            "acc_%": v.accuracy if v else None,
            "drop_pt": self.drop,
            "agree_%": v.agreement if v else None,
            "max_dp": round(v.max_abs_diff, 4) if v else None,
            "p50_ms": round(self.latency["p50_ms"], 2) if self.latency else None,
            "export_s": round(self.export_s, 1),
            "status": "FAILED" if self.error else ("OVER BUDGET" if self.within_budget is False else "ok"),
        }



@dataclass
class ExportContext:
    """Everything the per-format exporters share (built once per export)."""

    run: Any
    model: Any
    config: Any
    out_dir: Path
    calib_px: np.ndarray | None
    train_samples: list[Any]
    val_px: np.ndarray
    val_y: np.ndarray
    ref: np.ndarray
    keras_acc: float | None
    say: Callable[[str], None]
    onnx_fp32: Any = None  # converted once, reused by onnx_int8 and the doctor
    quant_models: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # see quant_model()
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # format -> per-layer rows
    calibrated: dict[tuple[Any, ...], bytes] = field(default_factory=dict)  # see calibrated_for()
    test_samples: list[Any] = field(default_factory=list)  # the data's test split: where the doctor reports
    qat_seconds: float | None = None  # the doctor's training-time budget for its QAT remedy (None: epochs only)
    qat_epochs: int | None = None  # the doctor's QAT epochs (None: config.qat_epochs)
    started: float = field(default_factory=time.perf_counter)  # when the export started (time.perf_counter)

    def facts(self, fmt: ExportFormat, io_type: str, **extra: Any) -> ModelFacts:
        return ModelFacts(
            labels=list(self.run.labels),
            preprocessing=self.run.preprocessing.to_dict(),
            backbone=self.run.backbone,
            precision=fmt.precision,
            format=fmt.name,
            io_type=io_type,
            extra=extra,
        )

    def calibration(self, n: int | None = None) -> np.ndarray:
        """Calibration images: the default sample, or a new stratified sample of ``n`` training images."""
        from edgetl.data import stratified_sample
        if n is None and self.calib_px is not None:
            return self.calib_px
        if not self.train_samples:
            raise EdgetlError("calibration needs training images and the run's data folder has none")
        picked = stratified_sample(self.train_samples, n or self.config.calib_samples, seed=self.config.seed)
        return prepare_images(picked, self.run.preprocessing)[0]


    def calibrated_for(self, quant: QuantizationConfig, model: Any, calib: np.ndarray) -> Callable[[Any], bytes]:
        """A cache of TFLite calibrated models: every selection of float layers the doctor tries for
        the same model, quantization and calibration images shares one calibration pass."""
        import json

        from edgetl.export import act_ranges
        from edgetl.export.tflite import tflite_calibrated_model

        # the min/max calibration pass is shared by every range choice (edgetl.export.act_ranges)
        key = (json.dumps(quant.with_(float_nodes=(), calib_method="minmax").to_dict(), sort_keys=True, default=str),
               id(model), len(calib))
        method = act_ranges.resolve(quant.calib_method, "tflite")

        def get(factory: Callable[[], Any]) -> bytes:
            if key not in self.calibrated:
                self.calibrated[key] = tflite_calibrated_model(factory)
            if method not in act_ranges.METHODS:
                return self.calibrated[key]
            if key + (method,) not in self.calibrated:
                t0 = time.perf_counter()
                raw, summary = act_ranges.tflite_ranges(self.calibrated[key], act_ranges.representative_samples(factory()),
                                                        method)
                self.calibrated[key + (method,)] = raw
                line = (f"activation ranges: {method} per tensor ({summary['tensors']} tensors, median range "
                        f"{summary['median_range_fraction']:.2f} of min/max), {time.perf_counter() - t0:.0f} s")
                self.quant_models[("note", "ranges", method, id(model))] = line
                self.say(f"  int8 {line}")
            return self.calibrated[key + (method,)]

        return get

    def onnx_source(self, quant: QuantizationConfig) -> Any:
        """The float ONNX model ORT's quantizer starts from for ``quant`` (GPTQ-rounded weights or the fp32 file)."""
        from edgetl.export import onnx as onnx_export

        model, _ = self.quant_model(quant, "onnx")
        if model is self.model:
            return self.onnx_fp32
        key = ("onnx", id(model))
        if key not in self.quant_models:
            self.quant_models[key] = onnx_export.convert(model, opset=self.config.opset)
        return self.quant_models[key]

    def rounded_model(self, quant: QuantizationConfig, family: str) -> tuple[Any, int]:
        """(Keras model, BatchNormalization layers folded into it) that ``family``'s converter quantizes for
        ``quant`` before any input split: for GPTQ rounding, BN folded and every kernel rounded (what QAT
        starts from); else the run's model (0 folded)."""
        self.quant_model(quant, family)
        key = _rounding_key(quant, family)
        return self.quant_models[key], self.quant_models.get(("bn_folded",) + key, 0)

    def quant_model(self, quant: QuantizationConfig, family: str) -> tuple[Any, Any]:
        """(Keras model, input map) that a converter quantizes for ``quant`` (int8 / int16x8).

        ``gptq`` rounding: BN folded, every kernel GPTQ-rounded on ``quant.rounding_samples``
        images spread over the export's calibration sample (computed once per export and
        shared by TFLite, ONNX and the doctor's candidates). TFLite
        int8 with uint8 input: a leading normalization that is exact on the int8 grid is taken
        out of the graph into the input's quantization (the input map, ``ptq.InputAffine``,
        turns pixels into what that model takes); otherwise the map is ``None`` (pixels).
        """
        from edgetl.export import ptq

        gptq = quant.mode == "int8" and quant.rounding == "gptq"
        safe = gptq and family == "onnx" and quant.overflow_fix  # 7-bit conv/dense grid (ptq.overflow_grid)
        key_r = _rounding_key(quant, family)
        if key_r not in self.quant_models:
            model = self.model
            if gptq:
                model, n_bn = ptq.fold_batchnorm(self.model)
                if model is self.model:  # nothing folded: round a copy, never the reference model
                    model = ptq.copy_model(self.model)
                calib = self.calibration()  # the export's own calibration sample, whatever quant.calib_samples says
                k = min(quant.rounding_samples, len(calib))
                picked = calib[np.unique(np.linspace(0, len(calib) - 1, k).round().astype(int))]  # label-sorted: spread
                t0 = time.perf_counter()
                from edgetl.quiet import Progress

                grid = "overflow-safe, " if safe else ""
                rep = ptq.gptq_round(model, picked.astype(np.float32),
                                     step=Progress(f"  int8 weights: GPTQ rounding ({grid}statistics batches + layers)", say=self.say).update,
                                     grid_for=ptq.overflow_grid if safe else None,
                                     hessians=self.quant_models.setdefault(("hessians", quant.rounding_samples), {}))
                line = (f"{rep.summary()} on {len(picked)} calibration images, {n_bn} BN folded, "
                        + (f"onto the overflow-safe grid ({ptq.overflow_summary()}), " if safe else "")
                        + f"{time.perf_counter() - t0:.0f} s")
                self.quant_models[("note",) + key_r] = line
                self.quant_models[("bn_folded",) + key_r] = n_bn
                self.say(f"  int8 weights: {line}")
            self.quant_models[key_r] = model
        model = self.quant_models[key_r]
        if family != "tflite" or quant.mode != "int8" or quant.io_type != "uint8":
            return model, None
        key_s = key_r + ("split",)
        if key_s not in self.quant_models:
            self.quant_models[key_s] = ptq.split_input_normalization(model) or (model, None)
        return self.quant_models[key_s]


#: calibration images of the QAT file's conversion: only the tensors tfmot left float take their ranges from
#: calibration (``tflite_qat`` in :func:`build_artifact_bytes`)
QAT_CALIB_IMAGES = 64


def _rounding_key(quant: QuantizationConfig, family: str) -> tuple:
    """The key of the rounded Keras model a converter of ``family`` quantizes for ``quant``."""
    if quant.mode != "int8" or quant.rounding != "gptq":
        return ("nearest",)
    return ("gptq", quant.rounding_samples) + (("7bit",) if family == "onnx" and quant.overflow_fix else ())


def _rounding_note(ctx: ExportContext, quant: QuantizationConfig, family: str) -> list[str]:
    """The GPTQ line for export.json (empty for round-to-nearest)."""
    key = _rounding_key(quant, family)
    line = ctx.quant_models.get(("note",) + key) if key[0] == "gptq" else None
    return [f"int8 weights: {line}"] if line else []


def build_artifact_bytes(ctx: ExportContext, fmt: ExportFormat, quant: QuantizationConfig | None = None,
                         remedy: str | None = None) -> tuple[bytes, dict[str, Any], list[str], list[str]]:
    """Convert the run's model to ``fmt`` with its metadata: (file bytes, quantization facts, notes, warnings)."""
    from edgetl.export import metadata

    notes: list[str] = []
    warns: list[str] = []
    cfg = ctx.config
    extra = {"remedy": remedy} if remedy else {}
    if fmt.family == "tflite":
        from edgetl.export import tflite

        if quant is None:
            quant = {
                "tflite_fp32": QuantizationConfig.for_float32(),
                "tflite_fp16": QuantizationConfig.for_float16(),
                "tflite_dynamic": QuantizationConfig.for_dynamic(),
                "tflite_int8": cfg.int8_quant(),
                "tflite_qat": cfg.int8_quant(),
                "tflite_int16x8": QuantizationConfig.for_int16x8(cfg.calib_samples, seed=cfg.seed),
            }[fmt.name]
        calib = ctx.calibration(quant.calib_samples if quant.calib_samples != cfg.calib_samples else None) if quant.needs_calibration else None
        model, affine = ctx.model, None
        if fmt.name == "tflite_qat":
            from edgetl.export.qat import qat_finetune

            model, qat_notes = qat_finetune(ctx, seconds=ctx.qat_seconds, epochs=ctx.qat_epochs)
            notes += qat_notes
            if calib is not None and len(calib) > QAT_CALIB_IMAGES:
                # The QAT graph carries its trained range for every tensor tfmot quantized; the converter's
                # calibration only sets the few it left float (the folded-in input normalization). The full
                # sample cost 61 s of Lite0's QAT conversion for 3 tensors.
                calib = calib[np.unique(np.linspace(0, len(calib) - 1, QAT_CALIB_IMAGES).round().astype(int))]
                notes.append(f"QAT conversion: {len(calib)} calibration images (spread over the sample) for the "
                             "tensors tfmot left in float; every other range is QAT's own")
        elif quant.needs_calibration:
            model, affine = ctx.quant_model(quant, "tflite")
            notes += _rounding_note(ctx, quant, "tflite")
        raw = tflite.convert(model, quant, calib, affine,
                             calibrated=ctx.calibrated_for(quant, model, calib) if quant.mode == "int8" else None)
        from edgetl.export.act_ranges import resolve

        ranges_note = ctx.quant_models.get(("note", "ranges", resolve(quant.calib_method, "tflite"), id(model)))
        if ranges_note and quant.mode == "int8":
            notes.append(ranges_note)
        sha = hashlib.sha256(raw).hexdigest()
        io_type = quant.io_type if quant.mode == "int8" else "float32"
        data, meta_warns = metadata.populate_tflite(raw, ctx.facts(fmt, io_type, **extra))
        warns += meta_warns
        io = tflite.io_details(raw)
        expect = [affine.scale, affine.uint8_zero_point] if affine else [1.0, 0]
        if quant.mode == "int8" and quant.io_type == "uint8" and io["input_quantization"] != expect:
            warns.append(f"uint8 input quantization is {io['input_quantization']}, not exactly {tuple(expect)}: "
                         "MediaPipe feeds raw pixels, so results there will differ")
        if affine:
            notes.append(f"input normalization carried by the uint8 input's quantization (scale {affine.scale:g}, "
                         f"zero point {affine.uint8_zero_point}): raw pixels in, no normalization op")
        qd = quant.to_dict()
        qd["overflow_fix"] = False  # an ONNX setting: the TFLite file keeps 8-bit weights everywhere
        if quant.mode == "int8":
            qd["calib_method"] = resolve(quant.calib_method, "tflite")
        qd["calib_samples_used"] = 0 if calib is None else int(len(calib))
        qd["graph_sha256"] = sha  # the converted graph before metadata: equal for two remedies that made the same model
        return data, {"quantization": qd, "io": io}, notes, warns
    # ONNX
    from edgetl.export import onnx as onnx_export
    from edgetl.export.metadata import set_onnx_props

    if ctx.onnx_fp32 is None:
        ctx.onnx_fp32 = onnx_export.convert(ctx.model, opset=cfg.opset)
    if fmt.name == "onnx_fp32":
        proto = type(ctx.onnx_fp32)()
        proto.CopyFrom(ctx.onnx_fp32)
        qd = QuantizationConfig.for_float32().to_dict()
        qd["calib_samples_used"] = 0
    else:
        quant = quant or cfg.int8_quant()
        calib = ctx.calibration(quant.calib_samples if quant.calib_samples != cfg.calib_samples else None)
        source = ctx.onnx_source(quant)
        notes += _rounding_note(ctx, quant, "onnx")
        proto, qnotes = onnx_export.quantize(source, calib, quant)
        notes += qnotes
        qd = quant.to_dict()
        from edgetl.export.act_ranges import resolve

        qd["calib_method"] = resolve(quant.calib_method, "onnx")
        qd["io_type"] = "float32"
        qd["calib_samples_used"] = int(len(calib))
        qd["graph_sha256"] = hashlib.sha256(proto.SerializeToString()).hexdigest()
    if fmt.precision != "fp32":
        import json

        from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, ORT_CONFIG_KEY, OVERFLOW_SAFE_KEY

        entry = proto.metadata_props.add()
        unsafe = onnx_export.overflow_violations(proto) if quant.overflow_fix else None
        if quant.overflow_fix and not unsafe:  # exact on every x86 CPU with ORT's defaults: no session option needed
            from edgetl.export.ptq import overflow_summary

            entry.key, entry.value = OVERFLOW_SAFE_KEY, overflow_summary("7bit" if quant.rounding != "gptq" else None)
        else:
            if not quant.overflow_fix and getattr(cfg, "onnx_overflow_fix", False):  # a doctor's remedy chose 8-bit weights
                warns.append("8-bit conv/dense weights (the doctor's remedy; export's default is the overflow fix): on x86 "
                             "CPUs without VNNI, ONNX Runtime needs session.x64quantprecision=1 (in the file's metadata, "
                             "edgetl.ort_session_config) and OpenVINO may lose predictions; --no-doctor keeps the overflow-safe file")
            if unsafe:
                warns.append(f"overflow fix incomplete: {len(unsafe)} layer(s) still have int8 weight pairs that x86 CPUs "
                             f"without VNNI can saturate (e.g. {unsafe[0]}); the file keeps the exact-session option instead")
            entry.key, entry.value = ORT_CONFIG_KEY, json.dumps(EXACT_INT8_CONFIG)
    set_onnx_props(proto, ctx.facts(fmt, "float32", **extra))
    onnx_export.check(proto)
    return proto.SerializeToString(), {"quantization": qd, "io": {"input_dtype": "float32", "output_dtype": "float32"}}, notes, warns


def make_artifact(ctx: ExportContext, fmt: ExportFormat, path: Path, quant: QuantizationConfig | None = None,
                  remedy: str | None = None, verify: bool = True) -> Artifact:
    """Convert, write atomically to ``path``, verify with the file's own runtime (unless ``verify`` is
    False: :func:`verify_artifact` later). Errors are recorded, not raised."""
    art = Artifact(fmt.name, str(path), fmt.precision, fmt.runtime, remedy=remedy)
    t0 = time.perf_counter()
    try:
        data, facts, notes, warns = build_artifact_bytes(ctx, fmt, quant, remedy)
        art.quantization, art.io = facts["quantization"], facts["io"]
        art.notes += notes
        art.warnings += warns
        atomic_write_bytes(path, data)  # with the usual (umask) permissions: files are meant to be copied
        art.size_bytes = len(data)
        art.quantization["model_sha256"] = hashlib.sha256(data).hexdigest()  # the file as shipped, metadata included
    except EdgetlError as exc:
        art.error = str(exc)
        art.path = None
        return art
    except Exception as exc:  # noqa: BLE001 - one bad format must not lose the others
        art.error = f"{fmt.name} export failed: {one_line(exc)}"
        art.path = None
        return art
    finally:
        art.export_s = time.perf_counter() - t0
    if verify:
        verify_artifact(ctx, art)
    return art


def verify_artifact(ctx: ExportContext, art: Artifact) -> Artifact:
    """Run the written file on the validation images and set accuracy, agreement and the budget check."""
    if art.path is None or len(ctx.val_px) == 0:
        return art
    t0 = time.perf_counter()
    try:
        from edgetl.quiet import Progress

        probs = run_file(art.path, ctx.val_px, ctx.config.threads,
                         progress=Progress(f"  verifying {Path(art.path).name}: images", say=ctx.say).update)
        art.verification = compare(probs, ctx.ref, ctx.val_y)
        art.agrees = np.asarray(probs).argmax(-1) == np.asarray(ctx.ref).argmax(-1)
    except EdgetlError as exc:
        art.error = f"verification failed: {exc}"
        return art
    finally:
        art.verify_s = time.perf_counter() - t0
    if ctx.keras_acc is not None and art.verification.accuracy is not None:
        art.drop = round(ctx.keras_acc - art.verification.accuracy, 4)
    art.within_budget = within_budget(art, ctx.config)
    if art.format.startswith("onnx") and art.precision != "fp32":
        _check_portability(ctx, art)
    return art


def within_budget(art: Artifact, config: Any) -> bool | None:
    """Both budgets: accuracy drop <= ``max_drop`` and agreement >= ``min_agreement`` (None: not verified)."""
    v = art.verification
    if v is None or v.n == 0:
        return None
    ok_agree = v.agreement >= config.min_agreement - 1e-9
    ok_drop = art.drop is None or art.drop <= config.max_drop + 1e-9
    return ok_agree and ok_drop


def _check_portability(ctx: ExportContext, art: Artifact) -> None:
    """Run a quantized ONNX file with ONNX Runtime's default session options too, as a user's own code would.

    edgetl's runners open int8 files with ``session.x64quantprecision=1`` (see
    :data:`edgetl.runtime.onnx_runner.EXACT_INT8_CONFIG`); on x86 CPUs without VNNI the default
    kernels saturate, and this says by how much on this CPU.
    """
    try:
        probs = run_file(art.path, ctx.val_px, ctx.config.threads, exact_int8=False)
        v = compare(probs, ctx.ref, ctx.val_y)
    except EdgetlError as exc:
        art.notes.append(f"default-session check failed: {exc}")
        return
    art.portability = {"default_session_agreement": v.agreement, "default_session_accuracy": v.accuracy}
    if v.agreement < art.verification.agreement - 0.5:
        art.warnings.append(
            f"with ONNX Runtime's default session options this CPU gives {v.agreement:.1f}% agreement "
            f"(vs {art.verification.agreement:.1f}% with session.x64quantprecision=1): its int8 kernels saturate "
            "without VNNI; edgetl's runners set that option, and so must other code that runs this file "
            "(it is in the file's metadata, key edgetl.ort_session_config)")


def prepare_images(samples: list[Any], pre: Any, progress: Callable[[int, int], None] | None = None,
                   store: bool = False) -> tuple[Any, np.ndarray, list[str]]:
    """(uint8 pixels, labels, warnings) of ``samples`` via :func:`edgetl.preprocess.prepare`.

    Unreadable files are skipped with one warning each, so one bad image cannot stop an export.
    ``store``: the pixels as a :class:`edgetl.pixels.PixelStore` (in RAM within the pixel budget, else
    in a temporary file), for sets that need not fit in RAM; otherwise one numpy array.
    """
    from edgetl.pixels import decode_store

    px, kept, bad = decode_store([s.path for s in samples], pre, progress, skip_bad=True, in_ram=not store)
    labels = np.array([samples[i].label for i in kept], dtype=np.int64)
    return (px if store else px.array()), labels, bad


def layer_report(ctx: ExportContext, art: Artifact) -> list[dict[str, Any]]:
    """Which layers of ``art`` add the quantization error: rows (also written next to the file), summary in a note.

    TFLite: TensorFlow Lite's QuantizationDebugger layer statistics; ONNX: each quantized node's
    output against its float twin on the same int8 inputs (:mod:`edgetl.export.quant_report`).
    Measured on 16 calibration images. A failure is a warning, never a failed export.
    """
    from edgetl.export import quant_report as qr

    debug = ctx.calibration()[:16]
    quant = ctx.config.int8_quant()
    try:
        if art.format.startswith("tflite"):
            from edgetl.export.tflite import converter_for

            model, affine = ctx.quant_model(quant, "tflite")
            calib = ctx.calibration()
            factory = lambda: converter_for(model, quant, calib, affine)  # noqa: E731
            rows = qr.tflite_layer_report(factory, None, debug, affine=affine,
                                          calibrated=ctx.calibrated_for(quant, model, calib)(factory))
        else:
            import tempfile

            import onnx

            with tempfile.TemporaryDirectory(prefix="edgetl-qr-") as tmp:
                f32 = Path(tmp) / "fp32.onnx"
                onnx.save(ctx.onnx_source(quant), str(f32))  # the float graph ORT quantized
                rows = qr.onnx_layer_report(f32, art.path, debug, threads=ctx.config.threads)
        stem = ctx.out_dir / f"quant_report_{art.format}"
        title = f"{art.format}: error each layer adds, in quantization steps"
        qr.write_report(stem.with_suffix(".json"), rows, title)
        try:
            qr.plot_report(stem.with_suffix(".png"), rows, title)
        except Exception as exc:  # noqa: BLE001 - a plot is a convenience
            art.notes.append(f"quantization report plot not written: {type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001
        art.warnings.append(f"per-layer quantization report failed: {one_line(exc)}")
        ctx.reports[art.format] = []
        return []
    line = qr.summary_line(rows)
    art.notes.append(f"per-layer report ({stem.name}.json): {line}")
    ctx.say(f"  {art.format}: {line}")
    ctx.reports[art.format] = rows
    return rows
