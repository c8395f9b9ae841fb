"""Shared fixtures: tiny generated image folders and a tiny trained run (no ../shared needed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"


# --------------------------------------------------------------------------- CI: a missing tool fails

# Skip reasons that mean "a test tool is not installed" (pytest.importorskip's "could not import ...",
# and the explicit messages of the mediapipe / torch / timm / weights tests).
MISSING_TOOL = re.compile(r"could not import|not installed|not importable", re.IGNORECASE)


def ci_strict() -> bool:
    """CI=true (set by .ci/run and by most CI services): missing test tools fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fail_missing_tool(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"CI=true: this test would be skipped because a test tool is missing ({reason}); "
                       "on CI that is a failure: install the test tools (scripts/test.sh)")


def _skip_reason(excinfo) -> str | None:
    if excinfo is None or not excinfo.errisinstance(pytest.skip.Exception):
        return None
    return str(excinfo.value.msg if hasattr(excinfo.value, "msg") else excinfo.value)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and ci_strict():
        reason = _skip_reason(call.excinfo)
        if reason is not None and MISSING_TOOL.search(reason):
            _fail_missing_tool(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module-level importorskip (skipped at collection)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and ci_strict():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3 else str(report.longrepr)
        if MISSING_TOOL.search(reason):
            _fail_missing_tool(report, reason)


@pytest.fixture(scope="session", autouse=True)
def _embed_cache_dir(tmp_path_factory):
    """Feature-extraction runs cache their embeddings in a session folder, not the user's cache."""
    old = os.environ.get("EDGETL_EMBED_CACHE")
    os.environ["EDGETL_EMBED_CACHE"] = str(tmp_path_factory.mktemp("embed_cache"))
    yield
    if old is None:
        os.environ.pop("EDGETL_EMBED_CACHE", None)
    else:
        os.environ["EDGETL_EMBED_CACHE"] = old


@pytest.fixture
def small_shards(monkeypatch, tmp_path) -> Path:
    """Embedding-cache shards of one batch (so tiny sets span several shards), in a per-test cache folder."""
    from edgetl import embed_cache

    monkeypatch.setattr(embed_cache, "SHARD_BATCHES", 1)
    monkeypatch.setenv("EDGETL_EMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def shared_dataset(name: str) -> Path:
    """Path to ``../shared/datasets/NAME``, or skip the test cleanly when it is absent."""
    p = DATASETS / name
    if not p.is_dir():
        pytest.skip(f"../shared/datasets/{name} not available")
    return p


def make_image(kind: int, size: int = 40, seed: int = 0) -> Image.Image:
    """A noisy image whose class (0: red-ish horizontal stripes, 1: blue-ish vertical, 2: green blob) is easy to learn."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, size=(size, size, 3)).astype(np.int32)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 0:
        mask = (yy // 4) % 2 == 0
        arr[mask, 0] += 180
    elif kind == 1:
        mask = (xx // 4) % 2 == 0
        arr[mask, 2] += 180
    else:
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        arr[mask, 1] += 180
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


#: a plain progress line of edgetl.quiet.Progress ("checking images: 21/21 (1.0/s, 20 s)"): printed only when a
#: step takes more than 2 s, which a loaded machine (two test workers on two cores) can make any step do
PROGRESS_LINE = re.compile(r".+: \d+(/\d+)? \((\d+\.\d/s|\d+\.\d s each)(, [^)]*)?\)")


def message_lines(err: str) -> list[str]:
    """stderr's lines without Progress lines: what a "one-line error" assertion is about."""
    return [line for line in err.strip().splitlines() if not PROGRESS_LINE.fullmatch(line)]


def make_image_folder(root: Path, classes=("alpha", "beta"), n_train: int = 12, n_val: int = 6, size: int = 40, split: bool = True,
                      n_test: int = 0) -> Path:
    """``root/train/<class>/*.png`` + ``root/val/<class>/*.png`` (or plain ``root/<class>/``), plus
    ``root/test/<class>/`` with ``n_test`` images per class (images no other split has)."""
    for ci, cname in enumerate(classes):
        d = root / "test" / cname
        for i in range(n_test):
            d.mkdir(parents=True, exist_ok=True)
            make_image(ci, size, 10_000 + 31 * ci + i).save(d / f"{cname}_test_{i:03d}.png")
    for ci, cname in enumerate(classes):
        for split_name, n in (("train", n_train), ("val", n_val)) if split else (("", n_train + n_val),):
            d = root / split_name / cname if split_name else root / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed = hash((ci, split_name, i)) % (2**31)
                make_image(ci, size, seed).save(d / f"{cname}_{split_name or 'all'}_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A 2-class train/val folder of tiny, easily separable PNGs."""
    return make_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, image_folder) -> Path:
    """A run directory with the documented layout, trained briefly on ``image_folder``.

    Built by hand with Keras (not through ``edgetl train``) so export/bench/runtime
    tests do not depend on the trainer.
    """
    import keras

    from edgetl import __version__
    from edgetl.data import load_dataset
    from edgetl.models import build, get_spec
    from edgetl.preprocess import prepare_batch

    keras.utils.set_random_seed(0)
    spec = get_spec("tiny_cnn")
    ds = load_dataset(image_folder)
    base = build("tiny_cnn", weights=None)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    out = keras.layers.Dense(len(ds.classes), activation="softmax", name="probs", dtype="float32")(x)
    model = keras.Model(base.input, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    xtr = prepare_batch(ds.train.paths, spec.preprocessing).astype("float32")
    ytr = np.array(ds.train.labels)
    model.fit(xtr, ytr, epochs=25, batch_size=8, verbose=0)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "labels.txt").write_text("\n".join(ds.classes) + "\n")
    config = {
        "edgetl_version": __version__,
        "backbone": "tiny_cnn",
        "preprocessing": spec.preprocessing.to_dict(),
        "labels": ds.classes,
        "num_classes": len(ds.classes),
        "data_dir": str(image_folder),
        "val_split": 0.2,
        "seed": 0,
        "data": ds.fingerprint(),
    }
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return run
