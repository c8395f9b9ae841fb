"""Numbers a user can trust (issue 23): the split export and bench measure on, the shipped file's hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import make_image_folder, message_lines
from edgetl.cli import main


def _flat_folder_with_corrupt_file(root: Path) -> Path:
    """A flat ``<class>/`` folder of 20 images per class, one of them not an image."""
    make_image_folder(root, n_train=16, n_val=4, split=False)
    (root / "alpha" / "alpha_all_004b.png").write_bytes(b"not a png at all")
    return root


def _run_on(tiny_run: Path, data: Path, dest: Path) -> Path:
    """A copy of ``tiny_run`` whose config.json records ``data`` as training would (decoded, validated)."""
    from edgetl.data import load_dataset

    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("export", "bench"))
    cfg = json.loads((dest / "config.json").read_text())
    ds = load_dataset(data, val_split=0.2, seed=0)
    cfg.update(data_dir=str(data), data=ds.fingerprint())
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_split_hashes_name_files_and_sizes(tmp_path):
    from edgetl.data import load_dataset, split_changes

    data = make_image_folder(tmp_path / "d", n_train=4, n_val=2)
    ds = load_dataset(data)
    fp = ds.fingerprint()
    assert set(fp["split_sha256"]) == {"train", "val"} and fp["split_sha256"]["train"] != fp["split_sha256"]["val"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert load_dataset(moved).split_hashes() == fp["split_sha256"]  # relative paths: the folder may move
    assert split_changes(load_dataset(moved), fp) is None
    victim = next((moved / "val" / "beta").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")  # same name, new size
    assert split_changes(load_dataset(moved), fp).startswith("val: 4 images now vs 4 at training (same count")


def test_export_verifies_on_the_training_split_despite_a_corrupt_file(tiny_run, tmp_path):
    from edgetl.data import load_dataset, split_sha256

    data = _flat_folder_with_corrupt_file(tmp_path / "flat")
    run = _run_on(tiny_run, data, tmp_path / "run")
    recorded = json.loads((run / "config.json").read_text())["data"]["split_sha256"]["val"]
    unchecked = load_dataset(data, val_split=0.2, seed=0, validate=False)
    assert split_sha256(unchecked.val, data) != recorded  # the corrupt file shifts a split that skips no file
    out = tmp_path / "out"
    assert main(["export", str(run), "--formats", "tflite_fp32", "--out", str(out), "--no-quant-report"]) == 0
    doc = json.loads((out / "export.json").read_text())
    assert doc["verified_on"]["split_sha256"] == recorded and doc["verified_on"]["matches_training"] is True
    assert doc["verified_on"]["images"] == doc["n_verify"] == 8


def test_changed_folder_is_one_line_error_or_a_recorded_warning(tiny_run, tmp_path, capsys):
    from conftest import make_image

    data = make_image_folder(tmp_path / "flat", n_train=8, n_val=2, split=False)
    run = _run_on(tiny_run, data, tmp_path / "run")
    make_image(1, 40, 99).save(data / "beta" / "beta_new.png")
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["export", str(run), "--formats", "tflite_fp32", "--out", str(out), "--no-quant-report"]) == 1
    err = message_lines(capsys.readouterr().err)  # a progress line may come first on a loaded machine
    assert len(err) == 1 and "no longer gives the split" in err[0] and "1 image(s) added; beta 8->9" in err[0], err
    assert not (out / "export.json").exists()
    assert main(["export", str(run), "--formats", "tflite_fp32", "--out", str(out), "--no-quant-report",
                 "--accept-changed-data"]) == 0
    doc = json.loads((out / "export.json").read_text())
    assert doc["verified_on"]["matches_training"] is False and "DATA CHANGED" in doc["verified_on"]["warning"]
    assert any("DATA CHANGED" in w for w in doc["warnings"])
    # bench: the same check before anything is measured
    capsys.readouterr()
    assert main(["bench", str(run / "model.keras"), str(run), "--runtimes", "tensorflow", "--min-runs", "1",
                 "--min-time", "0", "--warmup-runs", "0", "--warmup-time", "0", "--out", str(tmp_path / "b")]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no longer gives the split" in err[-1], err


def test_bench_records_the_split_it_measured_on(tiny_run, tmp_path):
    from edgetl.bench import BenchSettings, run_bench

    data = make_image_folder(tmp_path / "flat", n_train=8, n_val=2, split=False)
    run = _run_on(tiny_run, data, tmp_path / "run")
    res = run_bench([str(run)], BenchSettings(runtimes=("tensorflow",), min_runs=1, min_time=0, warmup_runs=0, warmup_time=0))
    (src,) = res.data["sources"]
    assert src["split_sha256"] == json.loads((run / "config.json").read_text())["data"]["split_sha256"]["val"]


def test_model_sha256_is_the_shipped_file(tiny_run, tmp_path):
    """export.json's model_sha256 is hashed after the metadata is written: it matches the file on disk."""
    import hashlib

    from edgetl.export.api import ExportConfig, export_run

    res = export_run(tiny_run, ExportConfig(formats=("tflite_fp32", "tflite_int8", "onnx_int8"), calib_samples=8,
                                            doctor=False, quant_report=False, rounding="nearest", out_dir=str(tmp_path)))
    for art in res.artifacts:
        assert art.error is None, art.error
        shipped = hashlib.sha256(Path(art.path).read_bytes()).hexdigest()
        assert art.quantization["model_sha256"] == shipped, art.format
        if "graph_sha256" in art.quantization:  # the converted graph before metadata: another hash
            assert art.quantization["graph_sha256"] != shipped
