"""The ``edgetl`` command line: a thin Typer layer over library functions.

No logic lives here: each command parses options, calls one library function and
prints. Heavy imports (TensorFlow, ONNX Runtime, LiteRT) happen inside the command
that needs them, so ``edgetl --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # Typer >= 0.17 vendors Click; older versions use the click package.
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx  # type: ignore[no-redef]

from edgetl import __version__
from edgetl.errors import EdgetlError, UsageError

app = typer.Typer(
    name="edgetl",
    help="Transfer learning to the edge: train, export (TFLite/ONNX, int8) and benchmark image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgetl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """edgetl: train, export and benchmark edge image classifiers."""
    _STATE["debug"] = debug
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# --------------------------------------------------------------------------- models


@app.command()
def models(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    all_: bool = typer.Option(False, "--all", help="Include test backbones."),
) -> None:
    """List the backbones: input size, size, published accuracy, weight source and availability."""
    from edgetl.models import list_specs
    from edgetl.report import backbone_rows, format_table

    rows = backbone_rows(list_specs(include_hidden=all_))
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


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, exit 2 for bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="edgetl", standalone_mode=False)
        return 0
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
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
