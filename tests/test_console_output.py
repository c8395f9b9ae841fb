"""What a user sees: the real CLI in a subprocess with stdout/stderr going to files (as in CI, nohup, | tee).

* ``edgetl train`` without a terminal prints one plain line per epoch and per frozen-base pass:
  no carriage returns, no ANSI escape codes;
* ``edgetl export`` shows its own progress and table, not TensorFlow's ``Saved artifact ...
  Captures: TensorSpec(...)`` dump, the converter's ``fully_quantize: ...`` or ONNX Runtime's
  calibration chatter (``--verbose`` shows them: the check below can see them when present);
* a degraded export step (``quant_pre_process`` failing) is a ``WARNING:`` line on the console.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL_NOISE = ("Captures:", "TensorSpec", "fully_quantize", "Collecting tensor data", "UserWarning", "Saved artifact")


def _edgetl(tmp_path: Path, *args: str, pre: str = "", env: dict | None = None, timeout: float = 240) -> tuple[int, str, str]:
    """Run ``edgetl ARGS`` in a fresh interpreter; stdout and stderr are regular files (not a TTY)."""
    code = f"import sys; {pre}\nfrom edgetl.cli import run\nsys.argv[0] = 'edgetl'\nrun()"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        rc = subprocess.run([sys.executable, "-c", code, *args], stdout=fo, stderr=fe, timeout=timeout,
                            env={**os.environ, **(env or {})}).returncode
    return rc, out.read_text(errors="replace"), err.read_text(errors="replace")


def _no_terminal_codes(text: str) -> None:
    assert "\r" not in text, "carriage return in non-terminal output"
    assert "\x1b[" not in text, "ANSI escape code in non-terminal output"
    assert "\x08" not in text, "backspace in non-terminal output"


def test_train_without_a_terminal_prints_plain_lines(image_folder, tmp_path):
    run = tmp_path / "run"
    rc, out, err = _edgetl(tmp_path, "train", str(image_folder), "--backbone", "tiny_cnn", "--weights", "none",
                           "--strategy", "fine-tune", "--epochs", "2", "--fine-tune-epochs", "1", "--batch-size", "16",
                           "--augment-views", "1", "--out", str(run))
    assert rc == 0, err
    _no_terminal_codes(out + err)
    lines = err.splitlines()
    assert sum(line.startswith("head epoch ") for line in lines) == 2
    assert sum(line.startswith("fine-tune epoch ") for line in lines) == 1
    assert [line.split(":")[0] for line in lines if line.startswith("frozen-base pass")] == [
        "frozen-base pass 1/3 (train, clean)", "frozen-base pass 2/3 (train, augmented view 1)", "frozen-base pass 3/3 (val)"]
    assert "head epoch 1/2: loss " in err and "val_accuracy" in err
    for word in TOOL_NOISE:
        assert word not in out + err, word
    assert out.count("val accuracy") == 1 and (run / "model.keras").is_file()


def test_export_is_quiet_and_verbose_is_not(tiny_run, tmp_path):
    rc, out, err = _edgetl(tmp_path, "export", str(tiny_run), "--int8", "--out", str(tmp_path / "export"))
    assert rc == 0, err
    _no_terminal_codes(out + err)
    for word in TOOL_NOISE:
        assert word not in out + err, word
    # edgetl's own progress and result are all there
    for fmt in ("tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8"):
        assert f"exporting {fmt} ..." in err and fmt in out
    assert "calibration: " in err and "wrote " in out
    # nothing but edgetl's own lines (progress, indented per-format results, its warnings)
    assert not [line for line in err.splitlines() if not line.startswith(("calibration:", "loading ", "exporting ", "per-layer quantization report:", "quantization doctor:", "  ", "WARNING: "))], err

    # --verbose captures nothing: the same export prints the converter's own output
    rc, out, err = _edgetl(tmp_path, "export", str(tiny_run), "--formats", "tflite_int8", "--out", str(tmp_path / "export-v"),
                           "--verbose")
    assert rc == 0, err
    assert "fully_quantize" in out + err and "Captures:" in out + err


def test_degraded_export_step_is_a_console_warning(tiny_run, tmp_path):
    # Without sympy, ONNX Runtime's quant_pre_process fails and the int8 ONNX is quantized without it.
    rc, out, err = _edgetl(tmp_path, "export", str(tiny_run), "--formats", "onnx_int8", "--out", str(tmp_path / "export"),
                           pre="sys.modules['sympy'] = None  # import sympy -> ImportError")
    assert rc == 0, err
    warning = [line for line in err.splitlines() if line.startswith("WARNING: onnx_int8: quant_pre_process failed")]
    assert len(warning) == 1, err
    doc = json.loads((tmp_path / "export" / "export.json").read_text())
    assert any("quant_pre_process failed" in n for n in doc["artifacts"][0]["notes"])
    # the converter output of a degraded export is kept and named
    log = Path(err.split("converter output of this export: ", 1)[1].splitlines()[0])
    assert log.is_file()
    log.unlink()


def test_degraded_notes_selects_failures():
    from types import SimpleNamespace

    from edgetl.cli import degraded_notes

    result = SimpleNamespace(artifacts=[
        SimpleNamespace(format="onnx_int8", notes=["quant_pre_process failed (ImportError); quantized the plain float graph"]),
        SimpleNamespace(format="tflite_int8", notes=["replaced the plain PTQ artifact (drop 2.0 pt) via the quantization doctor",
                                                     "QAT: 1 epoch(s) on 24 images, final train accuracy 0.9"]),
    ])
    assert degraded_notes(result) == ["onnx_int8: quant_pre_process failed (ImportError); quantized the plain float graph"]


def test_train_on_a_terminal_shows_keras_progress_bars(image_folder, tmp_path):
    """On a terminal (a pseudo-terminal here) the Keras bars reach it through the capture."""
    import pty
    import select

    master, slave = pty.openpty()
    code = "import sys; from edgetl.cli import run; sys.argv[0] = 'edgetl'; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "train", str(image_folder), "--backbone", "tiny_cnn", "--weights", "none",
                             "--strategy", "feature-extraction", "--epochs", "1", "--augment-views", "0", "--out", str(tmp_path / "run")],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = b"".join(chunks).decode(errors="replace")
    assert rc == 0, text
    assert "\x1b[" in text and "\u2501" in text and "/step" in text  # Keras' own progress bar (ANSI, bar glyphs)
    assert "head epoch 1/1:" not in text  # not the plain per-epoch lines
    for word in TOOL_NOISE:
        assert word not in text, word
