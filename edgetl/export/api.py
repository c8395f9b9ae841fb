"""``export_run(run_dir, ExportConfig) -> ExportResult``: the library behind ``edgetl export``.

Each artifact is converted, given its metadata, written atomically to
``RUN_DIR/export/<backbone>_<precision>.<suffix>``, then loaded back by its own
runtime and compared with the float Keras model on validation images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl import __version__
from edgetl.errors import EdgetlError, UsageError
from edgetl.formats import DEFAULT_FORMATS, INT8_FORMATS, ExportFormat, parse_formats
from edgetl.export.artifacts import (  # noqa: F401 - re-exported: the per-artifact steps
    Artifact,
    ExportContext,
    build_artifact_bytes,
    layer_report,
    make_artifact,
    prepare_images,
    verify_artifact,
    within_budget,
)
from edgetl.export.metadata import LABELS_NAME
from edgetl.export.verify import accuracy, low_margin
from edgetl.quant import QuantizationConfig
from edgetl.quiet import Progress
from edgetl.report import atomic_write_text, write_json

_Context = ExportContext  # the name before edgetl.export.artifacts existed

EXPORT_JSON = "export.json"


#: Seconds the automatic doctor may spend per export (``--doctor-time``): with the conversions and
#: verification before it, ``export --int8`` stays within about 6 minutes on 2 cores for a
#: Lite0 fine-tune (measured on sign_digits); ``--doctor`` alone has no limit.
AUTO_DOCTOR_TIME = 120.0
#: seconds of QAT training the doctor's QAT remedy gets (see ExportConfig.qat_time)
QAT_TIME = 120.0


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
        qat_time: seconds of QAT training the doctor may spend on its last 8-bit remedy, reached only
            when every post-training remedy missed the budget; QAT's own limit, not counted in the doctor's
            (``doctor_time``), so it is reached even when the post-training remedies used all of theirs.
        threads: threads of the runtimes during verification (default: all cores).
        quant_report: write the per-layer quantization report of every int8 file
            (``quant_report_<format>.json`` and ``.png``).
        calib_method: int8 activation ranges (Python API only): ``auto`` (default: percentile ranges
            in the TFLite file, the converter's min/max in the ONNX file), ``minmax``, ``mse`` or
            ``percentile`` per tensor (:mod:`edgetl.export.act_ranges`), ``entropy`` (ONNX).
        accept_changed_data: go on (with a loud warning in export.json) when the data folder no longer
            gives the split recorded in config.json; otherwise that is an error.
        onnx_overflow_fix: the int8 ``.onnx`` file's convolution and dense weights on the 7-bit grid
            (:attr:`edgetl.quant.QuantizationConfig.overflow_fix`), so that x86 CPUs without VNNI
            (AVX2) give the same results as every other CPU, with ONNX Runtime's default session
            options and with OpenVINO.
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
    qat_time: float = QAT_TIME
    threads: int | None = None
    quant_report: bool = True
    rounding: str = "gptq"
    rounding_samples: int = 64
    calib_method: str = "auto"
    doctor_time: float | None = None
    accept_changed_data: bool = False
    onnx_overflow_fix: bool = True

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
        if self.qat_time <= 0:
            raise UsageError(f"qat_time must be > 0 seconds, got {self.qat_time}")
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
                                           calib_method=self.calib_method,
                                           rounding=self.rounding, rounding_samples=self.rounding_samples,
                                           overflow_fix=self.onnx_overflow_fix)


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
    #: the float model's near-ties on the verification images (:func:`edgetl.export.verify.low_margin`)
    low_margin: dict[str, Any] | None = None

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
            "low_margin": self.low_margin,
            "max_drop": self.max_drop,
            "min_agreement": self.min_agreement,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "warnings": self.warnings,
            "doctor": self.doctor,
            "total_s": round(self.total_s, 2),
        }


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
    from edgetl.pixels import closing_stores

    with DirLock(out_dir, what="export"), closing_stores():  # decoded images freed when it ends, also on an error
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
        calib_px, _, bad = prepare_images(stratified_sample(train_samples, config.calib_samples, seed=config.seed),
                                          run.preprocessing, progress=Progress("  calibration images", say=say).update)
        warnings += bad
        if len(calib_px) == 0:
            raise EdgetlError("int8 calibration needs training images and none of the sampled files could be read")
    val = stratified_sample(ds.val.samples, config.verify_samples, seed=config.seed) if ds else []
    # in RAM within the pixel budget, else in a temporary file (edgetl.pixels): read a chunk at a time
    val_px, val_y, bad = prepare_images(val, run.preprocessing, progress=Progress("  verification images", say=say).update,
                                        store=True)
    warnings += bad

    say(f"loading {run.model_path}")
    model = run.load_model()
    _check_model(model, run)
    from edgetl.runtime.keras_runner import KerasRunner

    ref = KerasRunner(model, run.labels, run.preprocessing).predict(val_px) if len(val_px) else np.zeros((0, len(run.labels)), np.float32)
    keras_acc = accuracy(ref, val_y) if len(val_px) else None
    out_dir = Path(config.out_dir) if config.out_dir else run.export_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = ExportContext(run, model, config, out_dir, calib_px, train_samples, val_px, val_y, ref, keras_acc, say,
                        test_samples=list(ds.test.samples) if ds is not None and ds.test is not None else [],
                        started=t_start)

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
                          min_agreement=config.min_agreement, verified_on=_verified_on(run, ds, len(val_px), changed),
                          low_margin=low_margin(ref))
    if result.low_margin and any(f.quantized for f in fmts):
        lm = result.low_margin
        say(f"  float model: {lm['share_pct']:.1f}% of the {lm['images']} verification images are near-ties "
            f"(top-2 margin < {lm['threshold']:g}): the images int8 agreement can lose")

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


def _check_model(model: Any, run: Any) -> None:
    shape = tuple(model.input_shape[1:])
    h, w = run.preprocessing.input_size
    if shape != (h, w, 3):
        raise EdgetlError(f"{run.model_path} takes input {shape}, but the run's preprocessing says ({h}, {w}, 3)")
    n_out = model.output_shape[-1]
    if n_out != len(run.labels):
        raise EdgetlError(f"{run.model_path} has {n_out} outputs but labels.txt lists {len(run.labels)} classes")
