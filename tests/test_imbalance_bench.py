"""benchmarks/imbalance_bench.py: the geometric subsample (symlinks, source untouched) and the target check."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.imbalance_bench import compare, imbalanced_copy  # noqa: E402
from conftest import make_image_folder  # noqa: E402


def test_geometric_subsample_of_train_and_val(tmp_path):
    data = make_image_folder(tmp_path / "src", classes=("a", "b", "c"), n_train=10, n_val=10, n_test=4, size=16)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    shift = imbalanced_copy(data, tmp_path / "shift", ratio=10, seed=0, subsample_test=False)
    # class i of 3 keeps 10 ** (-i / 2) of its files: 10, round(3.16) = 3, 1
    assert shift["train"] == {"a": 10, "b": 3, "c": 1} and shift["val"] == {"a": 10, "b": 3, "c": 1}
    assert shift["test"] == {"a": 4, "b": 4, "c": 4}  # untouched
    same = imbalanced_copy(data, tmp_path / "same", ratio=10, seed=0, subsample_test=True)
    assert same["test"] == {"a": 4, "b": 1, "c": 1}  # round(4 * 0.32) = 1; never fewer than one image per class
    assert same["train"] == shift["train"]
    for f in (tmp_path / "shift" / "train" / "b").iterdir():
        assert f.is_symlink() and f.resolve().parent == (data / "train" / "b").resolve()
    # the same seed picks the same files; another seed may pick others
    assert sorted(p.name for p in (tmp_path / "same" / "train" / "b").iterdir()) == sorted(
        p.name for p in (tmp_path / "shift" / "train" / "b").iterdir())
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before  # source untouched


def test_target_check():
    def run(acc, bal):
        return {"test": {"accuracy": acc, "balanced_accuracy": bal}}

    off = run(0.80, 0.70)
    assert compare(run(0.79, 0.70), off)["met"]  # within 2 pt, balanced not lower
    assert not compare(run(0.77, 0.75), off)["met"]  # 3 pt of accuracy lost
    assert not compare(run(0.80, 0.69), off)["met"]  # balanced lower
    c = compare(run(0.85, 0.75), off)
    assert c["met"] and c["test_accuracy_pt_vs_off"] == 5.0 and c["test_balanced_pt_vs_off"] == 5.0
