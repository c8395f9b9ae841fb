"""benchmarks/splits.py: val halved into selection and test through symlinks, the source untouched."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.splits import accuracy_cell, wilson, with_test_split  # noqa: E402
from conftest import make_image_folder  # noqa: E402


def test_val_is_halved_by_sorted_name(tmp_path):
    data = make_image_folder(tmp_path / "src", n_train=4, n_val=5)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    out = with_test_split(data, tmp_path / "work")
    for cls in ("alpha", "beta"):
        val = sorted(p.name for p in (out / "val" / cls).iterdir())
        test = sorted(p.name for p in (out / "test" / cls).iterdir())
        src = sorted(p.name for p in (data / "val" / cls).iterdir())
        assert val == src[:3] and test == src[3:] and not set(val) & set(test)
        assert all((out / "test" / cls / n).resolve().parent == (data / "val" / cls).resolve() for n in test)
    assert (out / "train").resolve() == (data / "train").resolve()
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before  # source untouched
    assert with_test_split(data, tmp_path / "work") == out  # reused
    from edgetl.data import load_dataset

    ds = load_dataset(out)
    assert ds.test is not None and len(ds.test.paths) == 4 and len(ds.val.paths) == 6
    # a folder that has its own test split is used as it is
    assert with_test_split(out, tmp_path / "work2") == out.resolve()


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 0.0)
    lo, hi = wilson(146, 153)
    assert lo < 100 * 146 / 153 < hi and 90 < lo < hi < 98
    assert accuracy_cell(146, 153).startswith("95.42 % (146/153, ")
