"""edgetl bench: a run that measured nothing is not a success (issue 13).

* --data whose class folders match none of the models' labels: one line, before any row, exit 1;
* every row an error: the table is still written, then one line and exit 1;
* a mismatch that dooms only some rows, and a normal bench, still exit 0.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_image_folder
from edgetl.bench import targets as bench_mod  # where check_labels_up_front looks up _opened_labels
from edgetl.cli import main
from edgetl.runtime import fileinfo
from test_runtime import artifacts, build_artifacts  # noqa: F401 - shared session fixture

FAST = ["--threads", "1", "--min-runs", "3", "--min-time", "0", "--warmup-runs", "1", "--warmup-time", "0"]


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory):
    """Ten classes, none of them the tiny models' (alpha, beta)."""
    names = tuple(f"kind{i:02d}" for i in range(10))
    return make_image_folder(tmp_path_factory.mktemp("other"), classes=names, n_train=1, n_val=1, size=32)


def _err_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    return lines[-1]


def test_label_mismatch_fails_once_up_front(artifacts, other_classes, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "b"
    code = main(["bench", str(artifacts["run"]), "--data", str(other_classes), "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert code == 1, cap
    # one line, before any row ran ("[1/N] ..." progress lines would precede it)
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err, cap.err
    line = cap.err.strip()
    assert line.startswith("error: --data ") and "match none of the model's labels (alpha, beta)" in line
    # the folder's classes, truncated: 8 names shown, then the count
    assert "kind00, kind01" in line and "kind07, ... (10 in all)" in line and "kind09" not in line
    assert not (out / "bench.json").exists()


def test_label_mismatch_of_files_without_embedded_labels(artifacts, other_classes, tmp_path, capsys):  # noqa: F811
    # these test exports carry no edgetl metadata: their labels come from labels.txt, read by opening them
    code = main(["bench", str(artifacts["tflite_int8"]), str(artifacts["onnx_fp32"]), "--data", str(other_classes),
                 "--out", str(tmp_path / "b"), *FAST])
    cap = capsys.readouterr()
    assert code == 1 and len(cap.err.strip().splitlines()) == 1, cap.err
    assert "match none of the model's labels (alpha, beta)" in cap.err and "Traceback" not in cap.err


def test_up_front_check_reads_embedded_labels_without_loading(artifacts, other_classes, tmp_path, monkeypatch):  # noqa: F811
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort

    m = onnx.load(str(artifacts["onnx_fp32"]))
    for k, v in (("edgetl.labels", json.dumps(["alpha", "beta"])), ("note", "é, ünïcode")):
        e = m.metadata_props.add()
        e.key, e.value = k, v
    path = tmp_path / "labelled_fp32.onnx"
    onnx.save(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert fileinfo.onnx_metadata(path) == dict(sess.get_modelmeta().custom_metadata_map)
    assert fileinfo.onnx_metadata(artifacts["onnx_fp32"]) == {}

    def no_open(target):
        raise AssertionError(f"opened {target.path}")

    monkeypatch.setattr(bench_mod, "_opened_labels", no_open)
    targets, _ = bench_mod.discover_targets([artifacts["run"] / "model.keras", path], keras=True)
    targets[0].run_dir = artifacts["run"]  # as a run directory target
    with pytest.raises(bench_mod.LabelMismatchError, match="alpha, beta"):
        bench_mod.check_labels_up_front(targets, other_classes)
    bench_mod.check_labels_up_front(targets, artifacts["data"])  # matching data: passes without opening


def test_every_row_an_error_exits_nonzero(artifacts, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "broken_fp32.tflite"
    bad.write_bytes(artifacts["tflite_fp32"].read_bytes()[:200])
    bad2 = tmp_path / "broken_fp32.onnx"
    bad2.write_bytes(b"not an onnx file")
    out = tmp_path / "b"
    code = main(["bench", str(bad), str(bad2), "--data", str(artifacts["data"]), "--out", str(out),
                 "--runtimes", "litert,onnxruntime", *FAST])
    cap = capsys.readouterr()
    assert code == 1, cap
    line = _err_line(cap.err)
    assert line.startswith("error: all 2 bench row(s) failed") and "first error: broken_fp32" in line
    # the table and the reports still show the rows
    assert "broken_fp32.tflite" in cap.out and (out / "bench.json").is_file()
    d = json.loads((out / "bench.json").read_text())
    assert [r["status"].startswith("error: ") for r in d["rows"]] == [True, True]
    # --json: the document is printed, the exit code is the same
    code = main(["bench", str(bad), "--json", "--out", str(tmp_path / "j"), "--runtimes", "litert", *FAST])
    cap = capsys.readouterr()
    assert code == 1 and json.loads(cap.out)["rows"][0]["status"].startswith("error: ")
    assert _err_line(cap.err).startswith("error: all 1 bench row(s) failed")


def test_mismatch_found_in_the_loop_counts_as_failed_rows(artifacts, other_classes, tmp_path, capsys):  # noqa: F811
    # a file that cannot be opened ends the up-front check; the label error then comes from the row
    bad = tmp_path / "broken_fp32.tflite"
    bad.write_bytes(artifacts["tflite_fp32"].read_bytes()[:200])
    code = main(["bench", str(bad), str(artifacts["tflite_int8"]), "--data", str(other_classes),
                 "--out", str(tmp_path / "b"), "--runtimes", "litert", *FAST])
    cap = capsys.readouterr()
    assert code == 1
    assert _err_line(cap.err).startswith("error: all 2 bench row(s) failed")
    assert "match none of the model's labels" in cap.out  # the int8 row's error, in the table


def test_partial_mismatch_and_normal_bench_exit_zero(artifacts, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "xy"
    other.mkdir()
    shutil.copy(artifacts["tflite_fp32"], other / "other_fp32.tflite")
    (other / "labels.txt").write_text("x\ny\n")
    out = tmp_path / "b"
    code = main(["bench", str(artifacts["tflite_fp32"]), str(other / "other_fp32.tflite"), "--data",
                 str(artifacts["data"]), "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = {r["model"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["tiny_cnn_fp32.tflite"]["status"] == "ok"
    assert "match none of the model's labels (x, y)" in rows["other_fp32.tflite"]["status"]
    # a normal bench
    code = main(["bench", str(artifacts["onnx_fp32"]), "--data", str(artifacts["data"]), "--out", str(tmp_path / "n"), *FAST])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "error" not in cap.err


def test_failure_line_rules():
    from edgetl.bench import BenchResult, BenchRow, BenchSettings

    def result(*statuses):
        rows = [BenchRow(model=f"m{i}", path="p", format="tflite", runtime="litert", precision="fp32", threads=1,
                         status=s) for i, s in enumerate(statuses)]
        return BenchResult(rows, {}, BenchSettings(), {}, None, None, [])

    assert result("ok", "error: boom").failure() is None
    assert result("skipped: no GPU").failure() == (  # nothing measured, nothing passed
        "all 1 bench row(s) were skipped, nothing was measured; first: m0 [litert:cpu]: skipped: no GPU")
    assert result("error: boom", "error: bang").failure() == (
        "all 2 bench row(s) failed, nothing was measured; first error: m0 [cpu]: boom")
    assert result("skipped: no GPU", "error: boom").failure().startswith(
        "no bench row measured anything (1 of 2 failed, the others were skipped); first error: m1 [cpu]: boom")


def test_every_row_skipped_exits_nonzero(artifacts, tmp_path, capsys):  # noqa: F811
    """Nothing measured, nothing passed: an NPU-only bench on a machine without an NPU exits 1 (issue 23)."""
    out = tmp_path / "npu"
    code = main(["bench", str(artifacts["tflite_fp32"]), "--data", str(artifacts["data"]), "--out", str(out),
                 "--runtimes", "litert-compiled:npu", "--no-keras", *FAST])
    cap = capsys.readouterr()
    rows = json.loads((out / "bench.json").read_text())["rows"]
    if any(r["status"] == "ok" for r in rows):
        pytest.skip("this machine has an NPU that LiteRT can compile for")
    assert code == 1, cap
    assert _err_line(cap.err).startswith("error: all 1 bench row(s) were skipped, nothing was measured")
