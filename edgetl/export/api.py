"""``export_run(run_dir, ExportConfig) -> ExportResult``: the library behind ``edgetl export``.

Each artifact is converted, given its metadata, written atomically to
``RUN_DIR/export/<backbone>_<precision>.<suffix>``, then loaded back by its own
runtime and compared with the float Keras model on validation images.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl import __version__
from edgetl.errors import EdgetlError, UsageError, one_line
from edgetl.formats import DEFAULT_FORMATS, INT8_FORMATS, ExportFormat, parse_formats
from edgetl.export.metadata import LABELS_NAME, ModelFacts
from edgetl.export.verify import Verification, accuracy, compare, run_file
from edgetl.quant import QuantizationConfig
from edgetl.report import atomic_write_bytes, atomic_write_text, write_json

EXPORT_JSON = "export.json"


#: Seconds the automatic doctor may spend per export (``--doctor-time``): with the conversions and
#: verification before it, ``export --int8`` stays within about 6 minutes on 2 cores for a
#: Lite0 fine-tune (measured on sign_digits); ``--doctor`` alone has no limit.
AUTO_DOCTOR_TIME = 120.0


@dataclass(frozen=True)
class ExportConfig:
    """What ``edgetl export`` should write (every CLI option has a field here).

    Attributes:
        formats: explicit format names; None = ``tflite_fp32, onnx_fp32`` plus what the flags add.
        int8: add ``tflite_int8`` and ``onnx_int8``.
        fp16: add ``tflite_fp16``.
        dynamic: add ``tflite_dynamic``.
        qat: add ``tflite_qat`` (quantization-aware fine-tune, then int8).
        io_type: input/output type of full-integer TFLite models (uint8, int8, float32).
        calib_samples: training images for calibration (stratified; all if fewer).
        verify_samples: validation images for verification (stratified); None = all.
        max_drop: largest allowed accuracy loss of an artifact vs the Keras model, in points.
        min_agreement: smallest allowed top-1 agreement with the Keras model, in percent. An
            accuracy gain never excuses a file that changes more predictions than this allows.
        strict: an artifact over either budget makes the export fail (exit 1).
        doctor: True: always try remedies on int8 artifacts; None: only when one misses the budget; False: never.
        opset: ONNX opset.
        data_dir: image folder to use instead of the one recorded in the run.
        out_dir: output folder; default ``RUN_DIR/export``.
        seed: seed of the stratified samples.
        qat_epochs: epochs of quantization-aware fine-tuning.
        qat_samples: training images used by QAT (stratified).
        threads: threads of the runtimes during verification (default: all cores).
        quant_report: write the per-layer quantization report of every int8 file
            (``quant_report_<format>.json`` and ``.png``).
        accept_changed_data: go on (with a loud warning in export.json) when the data folder no longer
            gives the split recorded in config.json; otherwise that is an error.
        doctor_time: seconds the doctor may spend (shared fairly by the int8 files it treats; no
            remedy starts once a file's share is used up, and the untried ones are listed).
            None: ``AUTO_DOCTOR_TIME`` in automatic mode, no limit with ``doctor=True``.
    """

    formats: tuple[str, ...] | None = None
    int8: bool = False
    fp16: bool = False
    dynamic: bool = False
    qat: bool = False
    io_type: str = "uint8"
    calib_samples: int = 300
    verify_samples: int | None = None
    max_drop: float = 1.0
    min_agreement: float = 99.0
    strict: bool = False
    doctor: bool | None = None
    opset: int = 17
    data_dir: str | None = None
    out_dir: str | None = None
    seed: int = 0
    qat_epochs: int = 1
    qat_samples: int = 300
    threads: int | None = None
    quant_report: bool = True
    rounding: str = "gptq"
    rounding_samples: int = 64
    doctor_time: float | None = None
    accept_changed_data: bool = False

    def doctor_seconds(self) -> float | None:
        """The doctor's time limit in seconds (None: unlimited)."""
        if self.doctor_time is not None:
            return float(self.doctor_time)
        return None if self.doctor else AUTO_DOCTOR_TIME

    def resolve_formats(self) -> list[ExportFormat]:
        """The formats to write, in table order.

        Raises:
            UsageError: an unknown name (the message lists the valid ones) or a bad option value.
        """
        self.int8_quant()  # --io-type, --calib-samples, --rounding, --rounding-samples: checked by QuantizationConfig
        if self.verify_samples is not None and self.verify_samples < 1:
            raise UsageError(f"--verify-samples must be at least 1, got {self.verify_samples}")
        if self.max_drop < 0:
            raise UsageError(f"--max-drop must be >= 0, got {self.max_drop}")
        if self.doctor_time is not None and self.doctor_time <= 0:
            raise UsageError(f"--doctor-time must be > 0 seconds, got {self.doctor_time}")
        if not 0 <= self.min_agreement <= 100:
            raise UsageError(f"--min-agreement must be in 0-100 (percent), got {self.min_agreement}")
        names: list[str] = list(self.formats) if self.formats else list(DEFAULT_FORMATS)
        if self.int8:
            names += INT8_FORMATS
        if self.fp16:
            names.append("tflite_fp16")
        if self.dynamic:
            names.append("tflite_dynamic")
        if self.qat:
            names.append("tflite_qat")
        return parse_formats(names)

    def int8_quant(self) -> QuantizationConfig:
        return QuantizationConfig.for_int8(calib_samples=self.calib_samples, io_type=self.io_type, seed=self.seed,
                                           rounding=self.rounding, rounding_samples=self.rounding_samples)


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

    @property
    def ok(self) -> bool:
        return self.error is None and self.within_budget is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
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


ROW_COLUMNS = ["format", "file", "size_MB", "acc_%", "drop_pt", "agree_%", "max_dp", "p50_ms", "export_s", "status"]


@dataclass
class ExportResult:
    run_dir: str
    out_dir: str
    backbone: str
    labels: list[str]
    keras_accuracy: float | None
    n_verify: int
    n_calib: int
    max_drop: float
    artifacts: list[Artifact]
    warnings: list[str] = field(default_factory=list)
    min_agreement: float = 99.0
    doctor: list[dict[str, Any]] = field(default_factory=list)
    total_s: float = 0.0
    json_path: str | None = None
    verified_on: dict[str, Any] | None = None

    @property
    def failed(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.error]

    @property
    def over_budget(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.error is None and a.within_budget is False]

    @property
    def budget_failures(self) -> list[Artifact]:
        """Artifacts over ``max_drop`` or under ``min_agreement`` for which the quantization doctor found no remedy."""
        remedied = {d["target"] for d in self.doctor if d.get("winner")}
        return [a for a in self.over_budget if a.format not in remedied]

    def artifact(self, fmt: str) -> Artifact | None:
        for a in self.artifacts:
            if a.format == fmt:
                return a
        return None

    def rows(self) -> list[dict[str, Any]]:
        keras_row = {"format": "keras (reference)", "file": "model.keras", "acc_%": self.keras_accuracy,
                     "agree_%": 100.0 if self.n_verify else None, "status": "ok"}
        return [keras_row] + [a.row() for a in self.artifacts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "edgetl_version": __version__,
            "run_dir": self.run_dir,
            "out_dir": self.out_dir,
            "backbone": self.backbone,
            "labels": self.labels,
            "keras_accuracy": self.keras_accuracy,
            "n_verify": self.n_verify,
            "n_calib": self.n_calib,
            "verified_on": self.verified_on,
            "max_drop": self.max_drop,
            "min_agreement": self.min_agreement,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "warnings": self.warnings,
            "doctor": self.doctor,
            "total_s": round(self.total_s, 2),
        }


@dataclass
class _Context:
    """Everything the per-format exporters share (built once per export)."""

    run: Any
    model: Any
    config: ExportConfig
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

        from edgetl.export.quant_report import tflite_calibrated_model

        key = (json.dumps(quant.with_(float_nodes=()).to_dict(), sort_keys=True, default=str), id(model), len(calib))

        def get(factory: Callable[[], Any]) -> bytes:
            if key not in self.calibrated:
                self.calibrated[key] = tflite_calibrated_model(factory)
            return self.calibrated[key]

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
        key_r = ("gptq", quant.rounding_samples) if gptq else ("nearest",)
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
                rep = ptq.gptq_round(model, picked.astype(np.float32))
                line = f"{rep.summary()} on {len(picked)} calibration images, {n_bn} BN folded, {time.perf_counter() - t0:.0f} s"
                self.quant_models[("note",) + key_r] = line
                self.say(f"  int8 weights: {line}")
            self.quant_models[key_r] = model
        model = self.quant_models[key_r]
        if family != "tflite" or quant.mode != "int8" or quant.io_type != "uint8":
            return model, None
        key_s = key_r + ("split",)
        if key_s not in self.quant_models:
            self.quant_models[key_s] = ptq.split_input_normalization(model) or (model, None)
        return self.quant_models[key_s]


def _rounding_note(ctx: _Context, quant: QuantizationConfig) -> list[str]:
    """The GPTQ line for export.json (empty for round-to-nearest)."""
    line = ctx.quant_models.get(("note", "gptq", quant.rounding_samples)) if quant.mode == "int8" and quant.rounding == "gptq" else None
    return [f"int8 weights: {line}"] if line else []


def build_artifact_bytes(ctx: _Context, fmt: ExportFormat, quant: QuantizationConfig | None = None,
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

            model, qat_notes = qat_finetune(ctx)
            notes += qat_notes
        elif quant.needs_calibration:
            model, affine = ctx.quant_model(quant, "tflite")
            notes += _rounding_note(ctx, quant)
        raw = tflite.convert(model, quant, calib, affine,
                             calibrated=ctx.calibrated_for(quant, model, calib) if quant.mode == "int8" else None)
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
        notes += _rounding_note(ctx, quant)
        proto, qnotes = onnx_export.quantize(source, calib, quant)
        notes += qnotes
        qd = quant.to_dict()
        qd["io_type"] = "float32"
        qd["calib_samples_used"] = int(len(calib))
        qd["graph_sha256"] = hashlib.sha256(proto.SerializeToString()).hexdigest()
    if fmt.precision != "fp32":
        import json

        from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, ORT_CONFIG_KEY

        entry = proto.metadata_props.add()
        entry.key, entry.value = ORT_CONFIG_KEY, json.dumps(EXACT_INT8_CONFIG)
    set_onnx_props(proto, ctx.facts(fmt, "float32", **extra))
    onnx_export.check(proto)
    return proto.SerializeToString(), {"quantization": qd, "io": {"input_dtype": "float32", "output_dtype": "float32"}}, notes, warns


def make_artifact(ctx: _Context, fmt: ExportFormat, path: Path, quant: QuantizationConfig | None = None,
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


def verify_artifact(ctx: _Context, art: Artifact) -> Artifact:
    """Run the written file on the validation images and set accuracy, agreement and the budget check."""
    if art.path is None or len(ctx.val_px) == 0:
        return art
    t0 = time.perf_counter()
    try:
        probs = run_file(art.path, ctx.val_px, ctx.config.threads)
        art.verification = compare(probs, ctx.ref, ctx.val_y)
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


def within_budget(art: Artifact, config: ExportConfig) -> bool | None:
    """Both budgets: accuracy drop <= ``max_drop`` and agreement >= ``min_agreement`` (None: not verified)."""
    v = art.verification
    if v is None or v.n == 0:
        return None
    ok_agree = v.agreement >= config.min_agreement - 1e-9
    ok_drop = art.drop is None or art.drop <= config.max_drop + 1e-9
    return ok_agree and ok_drop


def _check_portability(ctx: _Context, art: Artifact) -> None:
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


def prepare_images(samples: list[Any], pre: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 pixels, labels, warnings) of ``samples`` via :func:`edgetl.preprocess.prepare`.

    Unreadable files are skipped with one warning each, so one bad image cannot stop an export.
    """
    from edgetl.preprocess import prepare

    h, w = pre.input_size
    px, labels, bad = [], [], []
    for s in samples:
        try:
            px.append(prepare(s.path, pre))
            labels.append(s.label)
        except EdgetlError as exc:
            bad.append(f"skipped unreadable image: {exc}")
    pixels = np.stack(px) if px else np.zeros((0, h, w, 3), np.uint8)
    return pixels, np.array(labels, dtype=np.int64), bad


def _load_data(run: Any, config: ExportConfig, say: Callable[[str], None]) -> tuple[Any | None, str | None, str | None]:
    """(dataset, why it is missing, data-changed warning): the split rebuilt exactly as training built it.

    Files are decoded and validated as in training: a file that fails to decode and stayed in the
    list would shift the seeded split (val images that were training images).

    Raises:
        DataChangedError: the folder no longer gives the split recorded in config.json
            (unless ``config.accept_changed_data``).
    """
    from edgetl.data import DataChangedError

    try:
        ds, warn = run.checked_dataset(config.data_dir, accept_changed=config.accept_changed_data,
                                       progress=_decode_progress(say))
        return ds, None, warn
    except DataChangedError:
        raise
    except EdgetlError as exc:
        return None, str(exc), None


def _decode_progress(say: Callable[[str], None]) -> Callable[[int, int], None]:
    from edgetl.quiet import Progress

    return Progress("checking images", say=say).update


def export_run(run_dir: str | Path, config: ExportConfig | None = None,
               progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a run to every requested format and prove each file against the float model.

    The output folder is locked for the whole export (``edgetl.locking.DirLock``): a second
    export into the same folder refuses instead of interleaving files. Every file is written
    atomically, so an export killed at any moment leaves complete files or none.

    Args:
        run_dir: a folder made by ``edgetl train``.
        config: what to write; default TFLite fp32 + ONNX fp32.
        progress: called with one line per step (the CLI prints them).

    Returns:
        The artifacts with sizes, timings and verification; also written to ``export.json``.

    Raises:
        UsageError: bad run directory or option.
        EdgetlError: incomplete run, calibration requested without training images, unwritable
            output folder, or another process exporting into the same folder.
    """
    from edgetl.locking import DirLock, check_output_dir
    from edgetl.run import load_run

    config = config or ExportConfig()
    config.resolve_formats()
    run = load_run(run_dir)  # a bad run directory fails before anything is created
    out_dir = Path(config.out_dir) if config.out_dir else run.export_dir
    check_output_dir(out_dir, min_free_mb=10)
    with DirLock(out_dir, what="export"):
        return _export_run(run_dir, config, progress)


def _export_run(run_dir: str | Path, config: ExportConfig | None = None,
                progress: Callable[[str], None] | None = None) -> ExportResult:
    """:func:`export_run` without the output-folder checks and lock."""
    from edgetl.data import stratified_sample
    from edgetl.run import load_run

    config = config or ExportConfig()
    say = progress or (lambda _s: None)
    t_start = time.perf_counter()
    fmts = config.resolve_formats()
    run = load_run(run_dir)
    warnings: list[str] = []

    need_calib = any(f.needs_calibration for f in fmts)
    ds, data_err, changed = _load_data(run, config, say)
    if changed:
        warnings.append(changed)
    if ds is None:
        if need_calib:
            raise EdgetlError(f"int8 calibration needs the run's training images: {data_err}")
        warnings.append(f"artifacts are NOT verified: {data_err}")
    train_samples = list(ds.train.samples) if ds else []
    calib_px = None
    if need_calib:
        if not train_samples:
            raise EdgetlError("int8 calibration needs training images and none were found")
        say(f"calibration: {min(config.calib_samples, len(train_samples))} of {len(train_samples)} training images")
        calib_px, _, bad = prepare_images(stratified_sample(train_samples, config.calib_samples, seed=config.seed), run.preprocessing)
        warnings += bad
        if len(calib_px) == 0:
            raise EdgetlError("int8 calibration needs training images and none of the sampled files could be read")
    val = stratified_sample(ds.val.samples, config.verify_samples, seed=config.seed) if ds else []
    val_px, val_y, bad = prepare_images(val, run.preprocessing)
    warnings += bad

    say(f"loading {run.model_path}")
    model = run.load_model()
    _check_model(model, run)
    from edgetl.runtime.keras_runner import KerasRunner

    ref = KerasRunner(model, run.labels, run.preprocessing).predict(val_px) if len(val_px) else np.zeros((0, len(run.labels)), np.float32)
    keras_acc = accuracy(ref, val_y) if len(val_px) else None
    out_dir = Path(config.out_dir) if config.out_dir else run.export_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(run, model, config, out_dir, calib_px, train_samples, val_px, val_y, ref, keras_acc, say)

    artifacts: list[Artifact] = []
    for fmt in fmts:
        say(f"exporting {fmt.name} ...")
        art = make_artifact(ctx, fmt, out_dir / fmt.file_name(run.backbone))
        artifacts.append(art)
        say(f"  {fmt.name}: " + (f"FAILED: {art.error}" if art.error else
                                 f"{art.size_bytes / 1e6:.2f} MB in {art.export_s:.1f} s"
                                 + (f", agreement {art.verification.agreement:.1f}%" if art.verification else "")))

    if config.quant_report and len(val_px):
        for art in artifacts:
            if art.format in ("tflite_int8", "onnx_int8") and art.error is None:
                say(f"per-layer quantization report: {art.format} ...")
                layer_report(ctx, art)

    result = ExportResult(str(run.path), str(out_dir), run.backbone, list(run.labels), keras_acc, len(val_px),
                          0 if calib_px is None else len(calib_px), config.max_drop, artifacts, warnings,
                          min_agreement=config.min_agreement, verified_on=_verified_on(run, ds, len(val_px), changed))

    # The quantization doctor: explicit, or automatic when an int8 artifact misses the budget.
    targets = [a for a in artifacts if a.format in ("tflite_int8", "onnx_int8") and a.error is None]
    if config.doctor is not False and targets and len(val_px):
        from edgetl.export.doctor import run_doctor

        chosen = targets if config.doctor else [a for a in targets if a.within_budget is False]
        limit = config.doctor_seconds()
        end = None if limit is None else time.monotonic() + limit
        for i, art in enumerate(chosen):
            say(f"quantization doctor: {art.format} (drop {art.drop} pt, agreement {art.verification.agreement:.1f}%; "
                f"budget: drop <= {config.max_drop} pt, agreement >= {config.min_agreement}%)")
            # each file's fair share of what is left of the doctor's time
            deadline = None if end is None else time.monotonic() + max(0.0, end - time.monotonic()) / (len(chosen) - i)
            result.doctor.append(run_doctor(ctx, result, art, deadline=deadline))

    for a in artifacts:
        for w in a.warnings:
            warnings.append(f"{a.format}: {w}")
        if a.error:
            warnings.append(f"{a.format}: FAILED: {a.error}")
        elif a.within_budget is False:
            warnings.append(
                f"{a.format} is over budget: accuracy {a.verification.accuracy:.2f}% vs {keras_acc:.2f}% "
                f"(drop {a.drop:+.2f} pt, budget {config.max_drop}), top-1 agreement {a.verification.agreement:.2f}% "
                f"(budget >= {config.min_agreement}%)"
            )
    result.total_s = time.perf_counter() - t_start
    result.json_path = str(out_dir / EXPORT_JSON)
    try:
        atomic_write_text(out_dir / LABELS_NAME, "\n".join(run.labels) + "\n")
        write_json(result.json_path, result.to_dict())
    except OSError as exc:
        raise EdgetlError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    return result


def _verified_on(run: Any, ds: Any, n: int, changed: str | None) -> dict[str, Any] | None:
    """What the artifacts were verified on: the val split's hash (as config.json records it) and image count."""
    if ds is None:
        return None
    from edgetl.data import split_sha256

    recorded = ((run.config.get("data") or {}).get("split_sha256") or {}).get("val")
    out = {"split": "val", "root": ds.root, "split_sha256": split_sha256(ds.val, ds.root), "split_images": len(ds.val.samples),
           "images": n, "recorded_split_sha256": recorded}
    out["matches_training"] = None if recorded is None else out["split_sha256"] == recorded
    if changed:
        out["warning"] = changed
    return out


def layer_report(ctx: _Context, art: Artifact) -> list[dict[str, Any]]:
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


def _check_model(model: Any, run: Any) -> None:
    shape = tuple(model.input_shape[1:])
    h, w = run.preprocessing.input_size
    if shape != (h, w, 3):
        raise EdgetlError(f"{run.model_path} takes input {shape}, but the run's preprocessing says ({h}, {w}, 3)")
    n_out = model.output_shape[-1]
    if n_out != len(run.labels):
        raise EdgetlError(f"{run.model_path} has {n_out} outputs but labels.txt lists {len(run.labels)} classes")
