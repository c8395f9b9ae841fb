"""benchmarks/parity_bench.py: the checks read the measured rows and can fail; merging separate runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import parity_bench as pb  # noqa: E402


def _file(n, ours, theirs, agree, flips, resize="mediapipe"):
    return {"n": n, "edgetl_correct": ours, "mediapipe_correct": theirs, "edgetl_accuracy": 100 * ours / n,
            "mediapipe_accuracy": 100 * theirs / n, "gap_pt": 100 * abs(ours - theirs) / n, "agreeing": agree,
            "agreement": 100 * agree / n, "flips": flips, "flip_rate": 100 * flips / n, "resize": resize}


def _doc(ds, rows, date="2026-12-05T10:00:00"):
    return {"date": date, "command": f"run {ds}", "stamp_suffix": f"-{ds}", "datasets": [ds], "environment": {},
            "rows": rows, "checks": [], "total_s": 10.0, "complete": True}


def test_checks_can_fail_and_merge_orders_datasets(tmp_path):
    sd = [{"dataset": "sign_digits", "variant": "before", "files": {"fp32": _file(314, 292, 292, 307, 9, "pillow"),
                                                                    "int8": _file(314, 294, 291, 309, 6, "pillow")}},
          {"dataset": "sign_digits", "variant": "after", "files": {"fp32": _file(314, 290, 290, 314, 1),
                                                                   "int8": _file(314, 290, 288, 312, 8)}}]
    cd = [{"dataset": "cats_dogs", "variant": "after", "files": {"fp32": _file(500, 495, 495, 500, 0),
                                                                 "int8": _file(500, 495, 495, 500, 2)}}]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc("cats_dogs", cd)))
    b.write_text(json.dumps(_doc("sign_digits", sd)))
    assert pb.merge([a, b], tmp_path) == 0
    merged = json.loads((tmp_path / "parity_2026-12-05-sign_digits-cats_dogs.json").read_text())
    assert [(r["dataset"], r["variant"]) for r in merged["rows"]] == [("sign_digits", "before"), ("sign_digits", "after"), ("cats_dogs", "after")]
    assert merged["complete"] is False  # cats_dogs has no "before" run
    checks = {c["metric"]: c for c in merged["checks"]}
    assert checks["sign_digits int8 MediaPipe vs edgetl predict top-1 agreement %"]["met"] is False  # 312/314 = 99.36
    assert checks["sign_digits int8 accuracy gap MediaPipe vs edgetl (pt)"]["met"] is False  # 2 images = 0.64 pt
    assert checks["sign_digits int8 resize flip rate % (mediapipe/gpu/pillow)"]["met"] is False
    assert checks["sign_digits fp32 resize flip rate % (mediapipe/gpu/pillow)"]["met"] is True
    assert checks["sign_digits fp32 test accuracy after - before (pt, edgetl predict)"]["met"] is False  # 290 < 292
    assert checks["cats_dogs int8 resize flip rate % (mediapipe/gpu/pillow)"]["met"] is True  # 0.4 %
    assert not any(k.startswith("cats_dogs fp32 test accuracy after") for k in checks)  # no before run to compare
    md = (tmp_path / "parity_2026-12-05-sign_digits-cats_dogs.md").read_text()
    assert "| sign_digits | after | int8 | mediapipe | 99.36 % (312/314)" in md and "**no**" in md


def test_derived_sets_are_built_from_the_source_layout(tmp_path):
    """sign_digits_gray: every split's image as a 1-channel PNG; hymenoptera_small: downscaled photos,
    val halved into val/test like the source; built once, atomically."""
    import numpy as np
    from PIL import Image

    data, work = tmp_path / "datasets", tmp_path / "work"
    rng = np.random.default_rng(0)
    for ds, splits, size in (("sign_digits", ("train", "val", "test"), (40, 40)), ("hymenoptera", ("train", "val"), (300, 200))):
        for split in splits:
            for cls in ("a", "b"):
                d = data / ds / split / cls
                d.mkdir(parents=True)
                for i in range(3):
                    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    work.mkdir()
    gray = pb.derived_dataset("sign_digits_gray", data, work)
    files = sorted(gray.rglob("*.png"))
    assert len(files) == 18 and not (work / "sign_digits_gray.partial").exists()
    assert {Image.open(f).mode for f in files} == {"L"}
    small = pb.derived_dataset("hymenoptera_small", data, work)
    counts = {s: len(list((small / s).rglob("*.jpg"))) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 4, "test": 2}
    assert max(Image.open(f).size for f in small.rglob("*.jpg")) == (pb.SMALL_SIDE, 64)
    (small / "train" / "a" / "0.jpg").unlink()
    assert pb.derived_dataset("hymenoptera_small", data, work) == small  # reused, not rebuilt
    assert not (small / "train" / "a" / "0.jpg").exists()
