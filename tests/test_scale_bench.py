"""benchmarks/scale_bench.py and tfdata_service_bench.py: the shared image pool, the RSS growth, partial files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale_bench  # noqa: E402


def test_smaller_sizes_are_hard_links_to_what_the_generator_writes(tmp_path):
    sub = scale_bench.dataset(tmp_path, 6, largest=10)
    direct = scale_bench.make_images(tmp_path / "direct", 6, size=256)
    files = sorted(p.relative_to(sub) for p in sub.rglob("*.jpg"))
    assert len(files) == 6 and files == sorted(p.relative_to(direct) for p in direct.rglob("*.jpg"))
    for f in files:
        assert (sub / f).stat().st_ino == (tmp_path / "data_10" / f).stat().st_ino  # a link, not a copy
        assert (sub / f).read_bytes() == (direct / f).read_bytes()  # image i does not depend on N
    assert scale_bench.dataset(tmp_path, 6, largest=10) == sub  # complete: reused


def test_growth_between_consecutive_sizes_and_smallest_to_largest():
    rows = [{"images": 8000, "exit_code": 0, "peak_rss_mb": 3100.0},
            {"images": 2000, "exit_code": 0, "peak_rss_mb": 3000.0},
            {"images": 32000, "exit_code": 1, "peak_rss_mb": 900.0},  # failed: not counted
            {"images": 100000, "exit_code": 0, "peak_rss_mb": 4000.0}]
    g = scale_bench.growth(rows)
    assert [(x["from"], x["to"]) for x in g] == [(2000, 8000), (8000, 100000), (2000, 100000)]
    assert g[0]["kb_per_image"] == round(100 * 1024 / 6000, 1)
    assert g[2]["kb_per_image"] == round(1000 * 1024 / 98000, 1)


def test_results_are_partial_until_the_last_size(tmp_path, monkeypatch):
    monkeypatch.setattr(scale_bench, "RESULTS", tmp_path)
    seen = []

    def fake(n, largest, args):
        seen.append(sorted(p.name for p in tmp_path.iterdir() if p.is_file()))
        return {"images": n, "exit_code": 0, "peak_rss_mb": 3000.0 + n / 100, "wall_seconds": n / 10,
                "embed_images_per_s": 30.0}

    monkeypatch.setattr(scale_bench, "one_size", fake)
    assert scale_bench.main(["--sizes", "100,400", "--work", str(tmp_path / "w")]) == 0
    assert seen[0] == [] and len(seen[1]) == 3 and all(n.endswith(("_partial.json", "_partial.md", "_partial.png")) for n in seen[1])
    final = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(final) == 3 and not any("partial" in n for n in final)
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["status"] == "all sizes run" and [r["images"] for r in doc["rows"]] == [100, 400]
    assert doc["rss_growth"][0]["kb_per_image"] == round(3 * 1024 / 300, 1)


def test_tfdata_pipelines_decode_to_model_inputs(tmp_path):
    from benchmarks import tfdata_service_bench as tb
    from edgetl.preprocess import Preprocessing, prepare

    data = scale_bench.make_images(tmp_path / "d", 5)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    for kind in ("edgetl", "tf"):
        batches = list(tb.pipeline(paths, kind))
        assert sum(b.shape[0] for b in batches) == 5 and batches[0].shape[1:] == (224, 224, 3)
        assert batches[0].dtype.name == "uint8"
    pre = Preprocessing(input_size=(224, 224), resize="mediapipe")
    first = next(iter(tb.pipeline(paths[:1], "edgetl"))).numpy()[0]
    assert np.array_equal(first, prepare(paths[0], pre))  # edgetl's own preprocessing, not a look-alike


def test_ab_summary_pairs_old_and_new_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(scale_bench, "RESULTS", tmp_path / "out")
    files = []
    for i, wall in enumerate([60.0, 66.0, 50.0, 45.0]):  # old, new, old, new
        f = tmp_path / f"r{i}.json"
        f.write_text(json.dumps({"commit": "abc", "edgetl_commit": "def", "repo": str(tmp_path),
                                 "rows": [{"images": 2000, "exit_code": 0, "wall_seconds": wall}]}))
        files.append(str(f))
    assert scale_bench.main(["--summarize-ab", *files]) == 0
    doc = json.loads(next((tmp_path / "out").glob("scale_ab_*.json")).read_text())
    assert [r["side"] for r in doc["rows"]] == ["old", "new", "old", "new"]
    assert doc["new_over_old"] == round(55.5 / 55.0, 3) and doc["new_over_old_per_pair"] == [1.1, 0.9]
