"""benchmarks/run.py and train_bench's selection: figures that can fail, on the test split (issue 13)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run as brun  # noqa: E402


def _bench(rows):
    b = object.__new__(brun.Bench)
    b.result = {"test": [], "checks": []}
    b._test_rows("sign_digits", "fine-tune", {"rows": rows})
    return b.result


def _row(model, runtime, precision, correct, agreement, threads=1, status="ok"):
    return {"model": model, "runtime": runtime, "precision": precision, "threads": threads, "status": status,
            "correct": correct, "n_images": 314, "top1": 100 * correct / 314, "agreement": agreement}


def test_int8_rows_are_checked_on_the_test_split_and_can_fail():
    res = _bench([_row("model.keras", "tensorflow", "fp32", 302, 100.0, threads=2),  # Keras runs with 2 threads
                  _row("m_int8.tflite", "litert", "int8", 303, 99.36),
                  _row("m_int8.onnx", "onnxruntime", "int8", 290, 95.0),
                  _row("m_int8.onnx", "onnxruntime", "int8", 10, 5.0, threads=2),  # a 2-thread row is not a second check
                  _row("m_int8.tflite", "litert", "int8", 0, None, status="error")])
    checks = {c["metric"]: c for c in res["checks"]}
    assert len(checks) == 4
    tfl = checks["sign_digits fine-tune tflite_int8 top-1 agreement % (test)"]
    assert tfl["met"] is True and "312/314 agree" in tfl["detail"]
    assert checks["sign_digits fine-tune tflite_int8 drop (pt, test)"]["measured"] == pytest.approx(-0.32, abs=0.01)
    onnx_agree = checks["sign_digits fine-tune onnx_int8 top-1 agreement % (test)"]
    onnx_drop = checks["sign_digits fine-tune onnx_int8 drop (pt, test)"]
    assert onnx_agree["met"] is False and onnx_drop["met"] is False  # 95 % < 99 %, 3.82 pt > 0.5
    keras = next(r for r in res["test"] if r["runtime"] == "tensorflow")
    assert keras["ci95"][0] < 96.18 < keras["ci95"][1] and keras["drop_pt"] == 0


def test_markdown_names_the_split_and_shows_counts_with_intervals():
    res = _bench([_row("model.keras", "tensorflow", "fp32", 302, 100.0), _row("m_int8.tflite", "litert", "int8", 303, 99.36)])
    res.update({"date": "2026-11-30T05:00:00", "quick": False, "datasets": ["sign_digits"], "environment": {}, "total_s": 1.0,
                "export": [], "train": [{"dataset": "sign_digits", "strategy": "fine-tune", "correct": 302, "total": 314,
                                         "val_correct": 292, "val_total": 310, "fine_tune_kept": False, "wall_s": 600.0,
                                         "fine_tune_images_per_s": 33.9}]})
    text = brun.markdown(res, final=False)
    assert "96.18 % (302/314, 93.4-97.8)" in text  # k/n and the Wilson interval beside the accuracy
    assert "| balanced accuracy | macro-F1 |" in text  # beside accuracy in both tables; '-' where a file predates them
    res["test"][1].update(balanced_accuracy=95.5, macro_f1=0.951)
    assert "| 95.50 % | 0.951 |" in brun.markdown(res, final=False)
    assert "head-only restored" in text and "Partial" in text
    assert "test split" in text


def test_bad_dataset_name_is_a_one_line_error(capsys, tmp_path):
    assert brun.main(["--data", str(tmp_path), "--datasets", "imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imagenet" in err[0]


def test_selection_callback_restores_each_heads_best_epoch():
    keras = pytest.importorskip("keras")
    from benchmarks.train_bench import _selection_callback

    inp = keras.Input((3,))
    model = keras.Model(inp, [keras.layers.Dense(2, name="gap_head")(inp), keras.layers.Dense(2, name="peer_head")(inp)])
    sel = _selection_callback({"gap_head": "val_gap_head_loss", "peer_head": "val_peer_head_loss"})
    sel.set_model(model)
    snapshots = []
    for epoch, (g, p) in enumerate([(0.9, 0.5), (0.4, 0.7), (0.6, 0.8)]):
        for name in ("gap_head", "peer_head"):
            layer = model.get_layer(name)
            layer.set_weights([np.full_like(w, epoch + 1) for w in layer.get_weights()])
        snapshots.append({n: model.get_layer(n).get_weights()[0].copy() for n in ("gap_head", "peer_head")})
        sel.on_test_begin()
        sel.on_test_end()
        sel.on_epoch_end(epoch, {"val_gap_head_loss": g, "val_peer_head_loss": p})
    assert sel.restore() == {"gap_head": 2, "peer_head": 1}
    np.testing.assert_array_equal(model.get_layer("gap_head").get_weights()[0], snapshots[1]["gap_head"])
    np.testing.assert_array_equal(model.get_layer("peer_head").get_weights()[0], snapshots[0]["peer_head"])
    assert len(sel.val_seconds) == 3 and all(s >= 0 for s in sel.val_seconds)
