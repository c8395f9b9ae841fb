"""Reliability and security: bad arguments, bad model files, killed and interrupted runs,
atomic writes, unwritable/full output folders, one writer per output folder.

Image fuzzing and folder shapes live in tests/test_robust_images.py; damaged .tflite/.onnx/.keras
files (empty, truncated, garbage, wrong suffix) in tests/test_runtime.py; damaged or malicious
.pth checkpoints and weight caches in tests/test_lite_weights.py. The README section "What edgetl guarantees" maps every
case to its test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_image_folder
from edgetl.cli import main

TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--quiet"]
#: Feature extraction on tiny_cnn: a few seconds per run, >= 0.9 val accuracy on the separable data.
TRAIN_FAST = [*TINY, "--strategy", "feature-extraction", "--lr", "0.1", "--batch-size", "16", "--patience", "0",
              "--no-augment"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EDGETL_TEST_EPOCH_DELAY", None)
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: the child gets the default handler back, as in a terminal (Python then installs its own).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _edgetl(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgetl", *map(str, args)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _wait_for(pred, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _latest(run: Path) -> str | None:
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


def _history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((run / "history.csv").read_text())))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("rel-data"), n_train=16, n_val=8)


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory) -> Path:
    """The uninterrupted reference run (same settings as the interrupted ones)."""
    out = tmp_path_factory.mktemp("rel-base") / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "6", *TRAIN_FAST]) == 0
    return out


# =========================================================================== 1. every CLI argument


def _cli_cases():
    """(id, argv template, needle). {data} image folder, {run} a finished run, {img} an image,
    {file} a regular file, {missing} a path that does not exist, {tmp} a fresh folder."""
    t = ["train", "{data}", "--out", "{tmp}/r", *TINY]
    return [
        # train: numbers out of range, unknown names, missing paths, a file for a folder
        ("train-dropout", [*t, "--dropout", "1.5"], "--dropout"),
        ("train-weight-decay", [*t, "--weight-decay", "-1"], "--weight-decay"),
        ("train-fine-tune-lr", [*t, "--fine-tune-lr", "0"], "--fine-tune-lr"),
        ("train-augment-views", [*t, "--augment-views", "99"], "--augment-views"),
        ("train-workers", [*t, "--workers", "0"], "--workers"),
        ("train-class-weights", [*t, "--class-weights", "maybe"], "--class-weights must be one of auto, off, sqrt, on"),
        ("train-objective", [*t, "--objective", "f1"], "--objective must be one of accuracy, balanced"),
        ("train-lr-inf", [*t, "--lr", "inf"], "--lr"),
        ("train-batch-text", [*t, "--batch-size", "ten"], "batch-size"),
        ("train-backbone", [*t, "--backbone", "resnet9000"], "efficientnet_lite0"),
        ("train-strategy", [*t, "--strategy", "guess"], "feature-extraction, fine-tune"),
        ("train-weights-missing", ["train", "{data}", "--out", "{tmp}/r", "--backbone", "tiny_cnn", "--weights", "{missing}.h5", "--quiet"], "{missing}"),
        ("train-data-missing", ["train", "{missing}", "--out", "{tmp}/r", *TINY], "not found"),
        ("train-data-file", ["train", "{file}", "--out", "{tmp}/r", *TINY], "not a folder"),
        ("train-out-file", ["train", "{data}", "--out", "{file}", *TINY], "not a folder"),
        ("train-unknown-option", [*t, "--epoch", "3"], "--epoch"),
        # export
        ("export-run-missing", ["export", "{missing}"], "not found"),
        ("export-run-file", ["export", "{file}"], "not a run directory"),
        ("export-format", ["export", "{run}", "--formats", "tflite_fp64"], "tflite_fp32"),
        ("export-io-type", ["export", "{run}", "--int8", "--io-type", "int4"], "uint8, int8"),
        ("export-calib", ["export", "{run}", "--calib-samples", "0"], "--calib-samples"),
        ("export-max-drop", ["export", "{run}", "--max-drop", "-1"], "--max-drop"),
        ("export-opset", ["export", "{run}", "--opset", "5"], "--opset"),
        ("export-data-missing", ["export", "{run}", "--data", "{missing}"], "{missing}"),
        ("export-data-file", ["export", "{run}", "--data", "{file}"], "{file}"),
        ("export-out-file", ["export", "{run}", "--out", "{file}"], "not a folder"),
        # bench
        ("bench-target-missing", ["bench", "{missing}"], "{missing}"),
        ("bench-threads-zero", ["bench", "{run}", "--threads", "0"], "--threads"),
        ("bench-threads-text", ["bench", "{run}", "--threads", "a,b"], "--threads"),
        ("bench-batch", ["bench", "{run}", "--batch", "0"], "--batch"),
        ("bench-max-time", ["bench", "{run}", "--max-time", "0"], "--max-time"),
        ("bench-samples", ["bench", "{run}", "--samples", "0"], "--samples"),
        ("bench-provider", ["bench", "{run}", "--providers", "quantumep"], "cpu"),
        ("bench-data-missing", ["bench", "{run}", "--data", "{missing}"], "{missing}"),
        ("bench-data-file", ["bench", "{run}", "--data", "{file}"], "{file}"),
        ("bench-min-accuracy", ["bench", "{run}", "--min-accuracy", "150"], "--min-accuracy"),
        ("bench-min-agreement", ["bench", "{run}", "--min-agreement", "101"], "--min-agreement"),
        ("bench-out-file", ["bench", "{run}", "--no-keras", "--out", "{file}"], "not a folder"),
        ("bench-unsupported-file", ["bench", "{file}"], "unsupported"),
        # predict
        ("predict-backbone", ["predict", "resnet9000", "{img}"], "efficientnet_lite0"),
        ("predict-top", ["predict", "{run}", "{img}", "--top", "0"], "--top"),
        ("predict-threads", ["predict", "{run}", "{img}", "--threads", "0"], "--threads"),
        ("predict-model-missing", ["predict", "{missing}.tflite", "{img}"], "not found"),
        ("predict-image-missing", ["predict", "{run}", "{missing}.png"], "{missing}"),
        ("predict-weights-missing", ["predict", "efficientnet_lite0", "{img}", "--weights", "{missing}.h5"], "{missing}"),
        ("predict-csv-dir", ["predict", "{run}", "{img}", "--csv", "{tmp}"], "--csv"),
        # demo
        ("demo-backbone", ["demo", "--backbone", "resnet9000", "--out", "{tmp}/d"], "efficientnet_lite0"),
        ("demo-threads", ["demo", "--threads", "0", "--out", "{tmp}/d"], "--threads"),
        ("demo-per-class", ["demo", "--train-per-class", "1", "--out", "{tmp}/d"], "--train-per-class"),
        ("demo-out-file", ["demo", "--out", "{file}", "--backbone", "tiny_cnn"], "not a folder"),
    ]


@pytest.mark.parametrize("case_id, argv, needle", _cli_cases(), ids=[c[0] for c in _cli_cases()])
def test_bad_argument_is_exit_2_and_one_line(case_id, argv, needle, capsys, tmp_path, image_folder, tiny_run):
    img = sorted((image_folder / "val" / "alpha").glob("*.png"))[0]
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    subs = {"{data}": str(image_folder), "{run}": str(tiny_run), "{img}": str(img), "{file}": str(afile),
            "{missing}": str(tmp_path / "missing"), "{tmp}": str(tmp_path)}

    def fill(s: str) -> str:
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    before = sorted(p.name for p in tiny_run.iterdir())
    code, out, err = run_cli(capsys, *[fill(a) for a in argv])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Traceback" not in out
    assert fill(needle) in lines[0], lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()  # nothing started
    assert sorted(p.name for p in tiny_run.iterdir()) == before  # e.g. no export/ folder made


def test_debug_shows_the_traceback(image_folder, tmp_path):
    from edgetl.errors import UsageError

    with pytest.raises(UsageError):
        main(["--debug", "train", str(image_folder), "--out", str(tmp_path / "r"), *TINY, "--dropout", "2"])


# =========================================================================== 2. model and checkpoint files


def test_keras_zip_without_config_and_renamed_hdf5(tmp_path, image_folder, capsys):
    import h5py

    from edgetl.errors import ModelFileError
    from edgetl.runtime.loader import runner_for

    nocfg = tmp_path / "noconfig.keras"
    with zipfile.ZipFile(nocfg, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    h5 = tmp_path / "renamed.keras"
    with h5py.File(h5, "w") as f:
        f.create_dataset("w", data=np.zeros(4))
        f.attrs["model_config"] = "{}"
    for p in (nocfg, h5):
        with pytest.raises(ModelFileError) as ei:
            runner_for(p)
        assert str(p) in str(ei.value) and "\n" not in str(ei.value)
        img = sorted((image_folder / "val" / "alpha").glob("*.png"))[0]
        code, _, err = run_cli(capsys, "predict", p, img)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_keras_lambda_bytecode_is_refused_and_not_executed(tmp_path, capsys, image_folder):
    """A .keras whose config holds a Lambda with marshalled Python bytecode: edgetl loads in safe mode."""
    import keras

    from edgetl.errors import ModelFileError
    from edgetl.runtime.loader import runner_for

    marker = tmp_path / "PWNED"
    # The payload runs whenever the Lambda is called, e.g. while a loader rebuilds the graph.
    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    inp = keras.Input((32, 32, 3))
    y = keras.layers.Lambda(payload, name="evil")(inp)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(y))
    evil = tmp_path / "evil.keras"
    model.save(evil)
    with zipfile.ZipFile(evil) as zf:
        cfg = zf.read("config.json").decode()
    assert '"Lambda"' in cfg and "function" in cfg  # the bytecode is really in the file
    marker.unlink(missing_ok=True)

    with pytest.raises(ModelFileError, match="safe_mode|Lambda|lambda"):
        runner_for(evil)
    img = sorted((image_folder / "val" / "alpha").glob("*.png"))[0]
    code, _, err = run_cli(capsys, "predict", evil, img)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "bench", evil, "--data", image_folder, "--min-runs", "1", "--min-time", "0",
                           "--warmup-runs", "0", "--warmup-time", "0", "--out", tmp_path / "b")
    assert not marker.exists(), "edgetl executed code from a model file"
    # Control: the same file loaded unsafely does run the payload, so the refusal above matters.
    keras.saving.load_model(evil, safe_mode=False, compile=False)
    assert marker.exists()


def test_damaged_training_checkpoint_on_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "2", *TRAIN_FAST]) == 0
    name = _latest(out)
    (out / "checkpoints" / name / "weights.npz").write_bytes(b"PK\x03\x04 garbage" * 10)
    capsys.readouterr()
    code = main(["train", str(data), "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "damaged" in err and "weights.npz" in err and len(err.strip().splitlines()) == 1, err


# =========================================================================== 3. SIGKILL mid-epoch, then --resume


def test_sigkill_mid_epoch_then_resume(data, baseline, tmp_path):
    run = tmp_path / "run"
    proc = _edgetl("train", data, "--out", run, "--epochs", "6", *TRAIN_FAST, EDGETL_TEST_EPOCH_DELAY="1.0")
    try:
        # epoch 3 has begun (checkpoint head-0002 exists, the delay hook holds epoch 3 open): kill it.
        _wait_for(lambda: _latest(run) == "head-0002", 120, proc, "checkpoint head-0002")
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _latest(run) == "head-0002" and not (run / "model.keras").exists()

    res = subprocess.run([sys.executable, "-m", "edgetl", "train", str(data), "--out", str(run), "--resume", "--quiet"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))  # every epoch once, in order
    m = json.loads((run / "metrics.json").read_text())
    base = json.loads((baseline / "metrics.json").read_text())
    assert m["resumed"] is True and m["epochs_run"] == base["epochs_run"] == {"head": 6, "fine_tune": 0}
    assert m["val_accuracy"] >= 0.9 and base["val_accuracy"] >= 0.9
    assert abs(m["val_accuracy"] - base["val_accuracy"]) <= 0.1
    assert not (run / ".edgetl.lock").exists()


# =========================================================================== 4. SIGINT


def test_sigint_stops_cleanly_and_says_how_to_resume(data, tmp_path):
    run = tmp_path / "run"
    proc = _edgetl("train", data, "--out", run, "--epochs", "6", *TRAIN_FAST, EDGETL_TEST_EPOCH_DELAY="1.0")
    try:
        _wait_for(lambda: _latest(run) == "head-0002", 120, proc, "checkpoint head-0002")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("interrupted; resume with: edgetl train ") and lines[-1].endswith("--resume"), lines[-1]
    assert _latest(run) in ("head-0002", "head-0003") and not (run / ".edgetl.lock").exists()
    # The printed command works as printed.
    cmd = shlex.split(lines[-1].split("resume with: ", 1)[1])
    assert cmd[:2] == ["edgetl", "train"]
    res = subprocess.run([sys.executable, "-m", "edgetl", *cmd[1:], "--quiet"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [int(r["epoch"]) for r in _history(run)] == list(range(1, 7))


# =========================================================================== 5. atomic writes


def test_atomic_write_killed_mid_write_leaves_no_partial_file(tmp_path):
    """SIGKILL while the bytes are written (fsync blocked): the final name never appears."""
    target = tmp_path / "model.tflite"
    code = (
        "import os, sys, time\n"
        "from edgetl.report import atomic_write_bytes\n"
        "real = os.fsync\n"
        "def slow(fd):\n"
        "    print('writing', flush=True); time.sleep(60)\n"
        "os.fsync = slow\n"
        f"atomic_write_bytes({str(target)!r}, b'x' * (8 << 20))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".model.tflite.") and p.name.endswith(".tmp") for p in leftovers)
    assert _safe_discover(tmp_path) == []  # temp files are never taken for artifacts


def _safe_discover(folder: Path):
    from edgetl.bench import discover_targets

    try:
        return discover_targets([folder], keras=False)[0]
    except Exception:  # noqa: BLE001 - "no model files" is the expected answer here
        return []


def test_every_writer_is_atomic():
    """Export, bench and run files go through report.atomic_write_* (no direct open(..., 'w'))."""
    import re

    for rel in ("edgetl/export/api.py", "edgetl/export/doctor.py", "edgetl/bench_report.py", "edgetl/plots.py",
                ):
        src = (ROOT / rel).read_text()
        assert not re.search(r"open\([^)]*['\"][wa]b?['\"]", src), rel
        assert ".write_bytes(" not in src and ".write_text(" not in src, rel


def test_export_killed_at_several_points(tiny_run, tmp_path):
    from edgetl.errors import EdgetlError
    from edgetl.runtime.loader import runner_for

    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run, run)
    checked = 0
    # Kill points: as each format starts converting/writing, and just after it was reported written.
    for marker, delay in (("exporting tflite_fp32", 0.0), ("exporting onnx_fp32", 0.0), ("  onnx_fp32:", 0.0),
                          ("exporting tflite_fp32", 0.8)):
        proc = _edgetl("export", run, "--formats", "tflite_fp32,onnx_fp32", "--verify-samples", "4")
        seen = []
        try:
            for line in proc.stderr:
                seen.append(line)
                if line.startswith(marker):
                    break
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert any(line.startswith(marker) for line in seen), "".join(seen)[-2000:]
        export = run / "export"
        for f in export.iterdir():
            if f.name.startswith("."):
                assert f.name.endswith(".tmp") or f.name == ".edgetl.lock", f.name  # never a final name
                continue
            assert f.suffix in (".tflite", ".onnx", ".json", ".txt"), f.name
            if f.suffix in (".tflite", ".onnx"):
                try:
                    r = runner_for(f, threads=1)
                except EdgetlError as exc:  # pragma: no cover - the failure this test exists for
                    raise AssertionError(f"partial artifact under a final name after SIGKILL: {exc}")
                assert r.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 2)
                checked += 1
            elif f.suffix == ".json":
                json.loads(f.read_text())
        assert not [t for t in _safe_discover(export) if t.path.name.startswith(".")]
    assert checked >= 1  # at least one kill point came after a complete file
    # A stale lock from a killed export does not block the next one.
    proc = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run), "--formats", "tflite_fp32",
                           "--verify-samples", "4"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# =========================================================================== 6. unwritable or full output folder


def test_out_under_a_regular_file_fails_before_training(data, tmp_path, capsys, monkeypatch):
    import edgetl.train.core

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(edgetl.train.core, "_train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = run_cli(capsys, "train", data, "--out", blocker / "run", *TRAIN_FAST)
    assert code == 1 and "cannot write to the run directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", "--out", blocker / "exp", tmp_path / "nope")
    assert code == 2  # the run is checked first


def test_read_only_out_fails_before_training(data, tmp_path, capsys, monkeypatch):
    """As root chmod does not stop writes, so a read-only folder is simulated: os.open gets EACCES there."""
    import errno

    import edgetl.train.core

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def guarded(path, flags, *a, **k):
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", guarded)
    monkeypatch.setattr(edgetl.train.core, "_train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = run_cli(capsys, "train", data, "--out", ro / "run", *TRAIN_FAST)
    assert code == 1 and "cannot write to" in err and "Permission denied" in err, err
    assert len(err.strip().splitlines()) == 1


def test_full_disk_fails_before_training(data, tmp_path, capsys, monkeypatch):
    import edgetl.locking
    import edgetl.train.core

    monkeypatch.setattr(edgetl.locking, "free_bytes", lambda p: 20 * 2**20)
    monkeypatch.setattr(edgetl.train.core, "_train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = run_cli(capsys, "train", data, "--out", tmp_path / "run", *TRAIN_FAST)
    assert code == 1 and "not enough free space" in err and "20 MB free" in err and "100 MB" in err, err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("EDGETL_MIN_FREE_MB", "10")
    with pytest.raises(pytest.fail.Exception, match="training started"):
        main(["--debug", "train", str(data), "--out", str(tmp_path / "run"), *TRAIN_FAST])


# =========================================================================== 7. one writer per output folder


def test_second_run_on_same_folder_refuses(data, tmp_path, capsys):
    run = tmp_path / "run"
    first = _edgetl("train", data, "--out", run, "--epochs", "8", *TRAIN_FAST, EDGETL_TEST_EPOCH_DELAY="4")
    try:
        _wait_for(lambda: _latest(run) is not None, 120, first, "the first checkpoint")
        for extra in (["--overwrite"], ["--resume"], []):
            code, _, err = run_cli(capsys, "train", data, "--out", run, "--epochs", "4", *TRAIN_FAST, *extra)
            assert code == 1 and f"PID {first.pid}" in err and "in use" in err, err
            assert len(err.strip().splitlines()) == 1
        # A second *process* gets the same answer.
        second = subprocess.run([sys.executable, "-m", "edgetl", "train", str(data), "--out", str(run), "--overwrite",
                                 *TRAIN_FAST], env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and f"PID {first.pid}" in second.stderr, second.stderr[-2000:]
        assert first.poll() is None  # the refusals really happened while the first run was writing
        first.send_signal(signal.SIGINT)  # end the first run early (saves test time)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == 130, err[-2000:]
    # Only the first run ever wrote here: its own contiguous epochs, no files from the refused runs.
    name = _latest(run)
    state = json.loads((run / "checkpoints" / name / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == list(range(1, state["epoch"] + 1))
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()
    assert not (run / ".edgetl.lock").exists()


def test_stale_lock_from_dead_pid_is_taken_over(data, tmp_path, capsys):
    from edgetl.locking import LOCK_NAME

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(f"{dead.pid}\n")
    code, _, err = run_cli(capsys, "train", data, "--out", run, "--epochs", "1", *TRAIN_FAST)
    assert code == 0, err
    assert f"taking over a stale lock" in err and f"PID {dead.pid}" in err
    assert (run / "model.keras").is_file() and not (run / LOCK_NAME).exists()


def test_export_into_a_locked_folder_refuses(tiny_run, tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from edgetl.locking import DirLock; "
         f"l = DirLock({str(tmp_path / 'exp')!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(capsys, "export", tiny_run, "--out", tmp_path / "exp", "--formats", "tflite_fp32")
        assert code == 1 and f"PID {holder.pid}" in err and "in use" in err, err
        assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [".edgetl.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_dirlock_unit(tmp_path):
    from edgetl.locking import DirLock, LockedError

    msgs = []
    with DirLock(tmp_path / "x", warn=msgs.append) as a:
        assert a.held and (tmp_path / "x" / ".edgetl.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError, match=f"PID {os.getpid()}"):
            DirLock(tmp_path / "x").acquire()  # flock is per open file: refused even in one process
    assert not (tmp_path / "x" / ".edgetl.lock").exists() and not msgs
    with DirLock(tmp_path / "x"):
        pass
