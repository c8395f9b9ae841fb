"""The one latency timer: ``edgetl bench``, the quantization doctor and the sweep all time through here.

Follows TFLite's ``benchmark_model``: warm-up by count and by time, then timed runs until both a
minimum count and a minimum duration are met; ``time.perf_counter_ns``; inputs set up before the
timed region (``runner.timer``). :func:`paired_latency` compares candidates: short blocks of runs,
interleaved in a rotating order and repeated, so that a drift of the shared CPU hits every
candidate alike; one is called faster only when the median of its paired ratios clears a margin.
No TensorFlow or ONNX Runtime is imported here (the runners import what they run).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

#: One candidate is called faster than another only when its paired p50 ratio is below 1 - this.
FASTER_MARGIN = 0.05


def latency_stats(times_ns: Sequence[int], batch: int = 1) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation), mean, population std, min, max in ms; fps = batch / mean."""
    if len(times_ns) == 0:
        raise ValueError("no timed runs")
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean, "std_ms": float(ms.std()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "runs": int(len(ms)),
            "fps": float(batch / (mean / 1e3)) if mean > 0 else math.inf}


def timed_runs(fn: Callable[[], Any], warmup_runs: int, warmup_time: float, min_runs: int, min_time: float,
               max_time: float, clock: Callable[[], int] = time.perf_counter_ns) -> tuple[int, list[int]]:
    """Warm up, then time ``fn`` until both ``min_runs`` and ``min_time`` are met (or ``max_time`` passes).

    Warm-up stops when both ``warmup_runs`` and ``warmup_time`` are met (also capped by ``max_time``).
    Times are in ``clock`` units (ns). Returns (warm-up count, per-run times). At least one run is
    always timed. The loop body is kept to two clock reads, the call and an append.
    """
    max_ns = int(max_time * 1e9)
    warm_ns = int(warmup_time * 1e9)
    start = clock()
    n_warm = 0
    now = start
    while (n_warm < warmup_runs or now - start < warm_ns) and now - start < max_ns:
        fn()
        n_warm += 1
        now = clock()
    times: list[int] = []
    append = times.append
    min_ns = int(min_time * 1e9)
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        append(t1 - t0)
        if (len(times) >= min_runs and t1 - start >= min_ns) or t1 - start >= max_ns:
            break
    return n_warm, times


def quick_latency(path: str | Path, pixels: np.ndarray, threads: int = 1, min_runs: int = 15,
                  min_time: float = 0.5, max_time: float = 5.0) -> dict[str, float]:
    """A short latency measurement of one model file with the same runner and timer as ``edgetl bench``.

    A full ``edgetl bench`` run is the number to report. ``pixels`` are real images; one batch of
    ``len(pixels)`` is timed.
    """
    from edgetl.runtime.loader import runner_for

    runner = runner_for(path, threads=threads)
    _, times = timed_runs(runner.timer(pixels), warmup_runs=3, warmup_time=0.1, min_runs=min_runs,
                          min_time=min_time, max_time=max_time)
    out = latency_stats(times, batch=len(pixels))
    out["threads"] = threads
    return out


#: other processes' average CPU use (in cores) during a timed row above which bench says the row was contended
CONTENDED_CORES = 0.25


def _proc_stat() -> tuple[int, int] | None:
    """(busy, steal) jiffies of the whole machine from /proc/stat's ``cpu`` line; None where there is none."""
    try:
        with open("/proc/stat") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 8:
        return None
    v = [int(x) for x in first[1:]]
    # user nice system idle iowait irq softirq [steal ...]; guest time is already inside user
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, (v[7] if len(v) > 7 else 0)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def contention(stat0: tuple[int, int], stat1: tuple[int, int], own_s: float, wall_s: float, hz: float) -> dict[str, float]:
    """Other processes' CPU use (cores, on average) and the hypervisor's steal (cores) over an interval.

    ``stat0``/``stat1``: :func:`_proc_stat` before and after; ``own_s``: this process's CPU seconds spent
    in between (all its threads); ``wall_s``: the interval; ``hz``: jiffies per second.
    """
    if wall_s <= 0:
        return {"others_cores": 0.0, "steal_cores": 0.0}
    busy_s = (stat1[0] - stat0[0]) / hz
    steal_s = (stat1[1] - stat0[1]) / hz
    return {"others_cores": max(0.0, (busy_s - own_s) / wall_s), "steal_cores": max(0.0, steal_s / wall_s)}


class CpuContention:
    """Measures what else used the machine's CPUs while a block ran (Linux; ``result`` stays None elsewhere).

    A latency measured while other processes ran (or while a VM's host stole cycles) is an upper bound
    that another run will not reproduce; bench records this per row and says so.
    """

    def __init__(self) -> None:
        self.result: dict[str, float] | None = None

    def __enter__(self) -> "CpuContention":
        self._stat, self._own, self._t = _proc_stat(), _own_cpu_s(), time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        stat = _proc_stat()
        if self._stat is None or stat is None:
            return
        try:
            hz = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            hz = 100.0
        self.result = contention(self._stat, stat, _own_cpu_s() - self._own, time.monotonic() - self._t, hz)


@dataclass
class PairedTiming:
    """Block medians (ms) per candidate, one per repeat, measured interleaved."""

    blocks: list[list[float]]
    runs_per_block: int
    threads: int
    margin: float = FASTER_MARGIN
    times: list[list[int]] = field(default_factory=list)  # every timed run, ns

    def p50(self, i: int) -> float:
        return float(np.median(np.asarray(self.times[i], dtype=np.float64) / 1e6)) if self.times else float(np.median(self.blocks[i]))

    def ratio(self, i: int, j: int) -> float:
        """Median over repeats of candidate i's block median / candidate j's, from the same repeat."""
        return float(np.median([a / b for a, b in zip(self.blocks[i], self.blocks[j]) if b > 0]))

    def faster(self, i: int, j: int) -> bool:
        """Whether i is faster than j beyond the timing noise: paired ratio below ``1 - margin``."""
        return self.ratio(i, j) < 1.0 - self.margin

    def relative(self, i: int) -> float:
        """Median over repeats of i's block median / the median of every candidate's in the same repeat
        (a paired figure: a slow moment of the shared CPU scales every candidate of that repeat alike)."""
        n = len(self.blocks[i])
        return float(np.median([self.blocks[i][r] / max(float(np.median([b[r] for b in self.blocks])), 1e-12)
                                for r in range(n)]))

    def fastest(self) -> int:
        return min(range(len(self.blocks)), key=lambda i: (self.relative(i), i))

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        f = self.fastest()
        return {"method": "paired: blocks of runs interleaved in rotating order, repeated",
                "repeats": len(self.blocks[0]) if self.blocks else 0, "runs_per_block": self.runs_per_block,
                "threads": self.threads, "faster_margin": self.margin,
                "candidates": [{"name": names[i] if names else i, "p50_ms": round(self.p50(i), 4),
                                "ratio_to_fastest": round(self.ratio(i, f), 4)} for i in range(len(self.blocks))]}


def paired_latency(paths: Sequence[str | Path], pixels: np.ndarray, threads: int = 1, repeats: int = 7,
                   runs_per_block: int = 5, margin: float = FASTER_MARGIN,
                   timers: Sequence[Callable[[], Any]] | None = None,
                   clock: Callable[[], int] = time.perf_counter_ns) -> PairedTiming:
    """Time several model files against each other on the same input, interleaved.

    Each repeat times ``runs_per_block`` runs of every candidate, the order rotated by one per
    repeat (no candidate always runs first, after a colder cache); one warm-up run each before.
    ``timers`` (tests) replaces opening ``paths``.
    """
    if timers is None:
        from edgetl.runtime.loader import runner_for

        timers = [runner_for(p, threads=threads).timer(pixels) for p in paths]
    n = len(timers)
    for fn in timers:
        fn()
    blocks: list[list[float]] = [[] for _ in range(n)]
    times: list[list[int]] = [[] for _ in range(n)]
    for r in range(repeats):
        for k in range(n):
            i = (k + r) % n
            fn = timers[i]
            block = []
            for _ in range(runs_per_block):
                t0 = clock()
                fn()
                block.append(clock() - t0)
            times[i] += block
            blocks[i].append(float(np.median(block)) / 1e6)
    return PairedTiming(blocks, runs_per_block, threads, margin, times)
