"""edgetl predict on trained models: run directories, .keras, .tflite and .onnx; --json and --csv."""

from __future__ import annotations

import csv
import json

import pytest

from test_runtime import artifacts, build_artifacts  # noqa: F401 - shared session fixture


@pytest.mark.parametrize("key", ["run", "keras", "tflite_fp32", "tflite_int8", "onnx_fp32"])
def test_predict_json_on_every_format(artifacts, key, capsys):  # noqa: F811
    from edgetl.cli import main

    folder = artifacts["data"] / "val"
    code = main(["predict", str(artifacts[key]), str(folder), "--json", "--top", "2", "--threads", "1"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads(cap.out)
    assert len(res) == 12
    correct = 0
    for r in res:
        assert set(r["labels"]) == {"alpha", "beta"} and r["scores"][0] >= r["scores"][1]
        assert abs(sum(r["scores"]) - 1.0) < 0.02
        correct += r["labels"][0] in r["file"].split("/")[-2]
    assert correct >= 10


def test_predict_csv_for_a_folder(artifacts, tmp_path, capsys):  # noqa: F811
    from edgetl.cli import main

    out = tmp_path / "preds.csv"
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    src = next((artifacts["data"] / "val" / "beta").glob("*.png"))
    (bad / "ok.png").write_bytes(src.read_bytes())
    code = main(["predict", str(artifacts["onnx_fp32"]), str(bad), "--csv", str(out), "-k", "1"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(out.open())}
    assert rows["ok.png"]["top1_label"] == "beta" and float(rows["ok.png"]["top1_score"]) > 0.5
    assert rows["broken.png"]["error"] and not rows["broken.png"]["top1_label"]
    assert "beta" in cap.out


def test_predict_reads_preprocessing_from_the_run(artifacts):  # noqa: F811
    from edgetl.predict import open_runner
    from edgetl.run import load_run

    info = load_run(artifacts["run"])
    for key in ("run", "tflite_int8", "onnx_fp32"):
        assert open_runner(str(artifacts[key])).preprocessing == info.preprocessing


def test_predict_bad_model_is_one_line(tmp_path, artifacts, capsys):  # noqa: F811
    from edgetl.cli import main

    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    img = next((artifacts["data"] / "val" / "alpha").glob("*.png"))
    assert main(["predict", str(bad), str(img)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
