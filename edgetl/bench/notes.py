"""What the rows say: the recommended row (fastest that meets the top-1 floor and the agreement
budget), int8 vs fp32 speed notes, and MediaPipe vs LiteRT agreement."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgetl.bench.results import MEANINGFUL_SPEEDUP, BenchRow


def client_agreement(rows: Sequence[BenchRow], top1: dict[tuple, np.ndarray]) -> list[str]:
    """Per file with a MediaPipe row: its top-1 agreement with the LiteRT row (CPU) of the same file, set on the
    MediaPipe row (``detail["agreement_vs_litert"]``) and returned as notes: what the phone app says vs edgetl."""
    notes = []
    for r in rows:
        if r.runtime != "mediapipe" or not r.ok:
            continue
        mine = top1.get((r.path, "mediapipe", r.device, r.precision))
        lite = next((v for k, v in top1.items() if k[:3] == (r.path, "litert", "cpu")), None)  # the file's own precision
        if mine is None or lite is None or len(mine) != len(lite) or not len(mine):
            continue
        k = int((mine == lite).sum())
        r.detail["agreement_vs_litert"] = round(100.0 * k / len(mine), 3)
        r.detail["agreement_vs_litert_count"] = [k, len(mine)]
        notes.append(f"{r.model}: MediaPipe ImageClassifier vs LiteRT (edgetl's resize, "
                     f"{r.detail.get('edgetl_resize', '?')}) top-1 agreement {100.0 * k / len(mine):.2f} % ({k}/{len(mine)})")
    return notes


def choose_best(rows: Sequence[BenchRow], min_accuracy: float | None, ref_top1: Sequence[float | None] = (),
                min_agreement: float | None = None) -> tuple[float | None, dict[str, Any] | None, str | None]:
    """(floor, best, why not): the fastest p50 among rows that meet the top-1 floor (percent) and
    agree with the float reference's top-1 on at least ``min_agreement`` % of the images.

    Top-1 alone is not enough: a file can score as well as the float model while disagreeing with it
    on several images (OpenVINO's int8 kernels on AVX2 gave 80 % agreement); it is not the model
    that was verified. So nothing is recommended without a float reference, and a row whose
    agreement is unknown is never picked; ``why not`` says why when nothing is. Without
    ``min_accuracy`` the floor is the reference's top-1 minus one point.
    """
    known = [r for r in ref_top1 if r is not None]
    floor = float(min_accuracy) if min_accuracy is not None else ((min(known) - 1.0) if known else None)
    timed = [r for r in rows if r.ok and r.p50_ms is not None]
    if not timed:
        return floor, None, "no row was measured"
    if not known:
        return floor, None, ("no recommendation: no float reference (the Keras model or an fp32 file) was measured on "
                             "labelled images, so no row's agreement with the float model is known")
    ok = [r for r in timed if r.agreement is not None and r.top1 is not None]
    unknown = sorted({f"{r.model} on {r.runtime}" for r in timed if r.agreement is None or r.top1 is None})
    if min_agreement is not None:
        ok = [r for r in ok if r.agreement + 1e-9 >= min_agreement]
    if floor is not None:
        ok = [r for r in ok if r.top1 + 1e-9 >= floor]
    if not ok:
        why = f"no row reaches the top-1 floor of {floor:.2f} %" + (
            f" with >= {min_agreement:g} % agreement" if min_agreement is not None else "")
        if unknown:
            why += f" (agreement unknown, never recommended: {', '.join(unknown[:6])})"
        return floor, None, why
    b = min(ok, key=lambda r: (r.p50_ms, -(r.top1 or 0)))
    return floor, {"model": b.model, "path": b.path, "format": b.format, "runtime": b.runtime, "precision": b.precision,
                   "threads": b.threads, "device": b.device, "p50_ms": b.p50_ms, "top1": b.top1, "floor_top1": floor,
                   "agreement": b.agreement, "min_agreement": min_agreement}, None


def contention_note(rows: Sequence[BenchRow], env: dict[str, Any]) -> list[str]:
    """One note when other processes (or a VM host's steal) used the CPUs while rows were timed."""
    from edgetl.runtime.timing import CONTENDED_CORES

    hit = []
    for r in rows:
        others = r.detail.get("cpu_others_cores") or 0.0
        steal = r.detail.get("cpu_steal_cores") or 0.0
        if r.ok and r.p50_ms and others + steal >= CONTENDED_CORES:
            hit.append((others + steal, others, steal, r))
    if not hit:
        return []
    total, others, steal, worst = max(hit, key=lambda h: h[0])
    cores = (env.get("cpu") or {}).get("usable_cores") or (env.get("cpu") or {}).get("logical_cores")
    of = f" of {cores}" if cores else ""
    what = f"other processes used up to {others:.2f}{of} cores" + (f" and the hypervisor stole {steal:.2f}" if steal >= 0.05 else "")
    return [f"shared CPU: while {len(hit)} of {sum(1 for r in rows if r.ok and r.p50_ms)} timed rows ran, {what} on average "
            f"(the most in {worst.model} on {worst.runtime}): their latencies are upper bounds that an idle machine will not "
            "reproduce; compare rows with care, or rerun with the machine otherwise idle (per row: cpu_others_cores in bench.json)."]


def speed_notes(rows: Sequence[BenchRow], env: dict[str, Any]) -> list[str]:
    """Say plainly how int8 compares with fp32 on the same runtime and threads; never claim an unmeasured speed-up."""
    from edgetl.runtime.env import int8_fast_path

    notes = []
    fast = int8_fast_path(env)
    flags = env.get("cpu", {}).get("flags", {})
    have = ", ".join(k for k in ("avx512_vnni", "avx_vnni", "amx", "dotprod", "i8mm") if flags.get(k))
    groups: dict[tuple, dict[str, BenchRow]] = {}
    for r in rows:
        if r.ok and r.p50_ms:
            groups.setdefault((r.format, r.runtime, r.device, r.threads, r.batch), {})[r.precision] = r
    for (fmt, rt, dev, th, _), by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if dev != "cpu":
            where = f"{fmt}/{rt} on {dev}"
        else:  # None: the runtime's own thread default (MediaPipe has no thread setting)
            where = f"{fmt}/{rt}, {th} thread(s)" if th is not None else f"{fmt}/{rt}, its own thread default"
        notes += _lowered_notes(by, where)
        q = next((p for p in ("int8", "qat_int8") if p in by), None)
        if q is None or "fp32" not in by:
            continue
        a, b = by[q].p50_ms, by["fp32"].p50_ms
        ratio = a / b
        if ratio <= 1.0 - MEANINGFUL_SPEEDUP:
            notes.append(f"{q} is {b / a:.2f}x faster than fp32 ({where}: p50 {a:.3g} vs {b:.3g} ms).")
        else:
            verdict = "slower than" if ratio > 1.02 else "not meaningfully faster than"
            why = ("this CPU has no int8 dot-product instructions (VNNI/dotprod), so int8 runs at about float speed here; "
                   "the gain is mainly the ~4x smaller file (ARM CPUs with dotprod typically run XNNPACK int8 2-3x faster)"
                   if not fast else f"even though this CPU has {have or 'int8 dot-product instructions'}, no int8 speed-up was measured for this model and runtime")
            notes.append(f"{q} is {verdict} fp32 ({where}: p50 {a:.3g} vs {b:.3g} ms, ratio {ratio:.2f}): {why}.")
    return notes


def saturation_notes(rows: Sequence[BenchRow], env: dict[str, Any], min_agreement: float | None) -> list[str]:
    """Why an int8 row on an x86 CPU without VNNI can lose many predictions, and what to run instead.

    Such CPUs' int8 kernels (OpenVINO's, and ONNX Runtime's default ones) add pairs of uint8 x int8
    products in 16 bits with saturation; 8-bit weights overflow it (measured: 72-80 % agreement on
    OpenVINO for a sign_digits Lite0). An ``.onnx`` file that ``edgetl export`` marked overflow-safe
    (7-bit conv/dense weights) cannot overflow; such a row gets no note.
    """
    import platform

    from edgetl.runtime.env import int8_fast_path
    from edgetl.runtime.onnx_runner import overflow_safe

    if int8_fast_path(env) or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    floor = 99.0 if min_agreement is None else float(min_agreement)
    notes = []
    for r in rows:
        if not (r.ok and r.precision.startswith("int8") and r.agreement is not None and r.agreement < floor):
            continue
        if r.runtime not in ("openvino",) or (r.format == "onnx" and overflow_safe(r.path)):
            continue
        other = ("the int8 .onnx that edgetl export writes (7-bit conv/dense weights, overflow-safe) runs exactly here"
                 if r.format == "onnx" else "LiteRT runs this .tflite exactly; for OpenVINO use the int8 .onnx edgetl export writes "
                 "(7-bit conv/dense weights, overflow-safe)")
        notes.append(f"{r.model} on {r.runtime}: {r.agreement:.2f} % top-1 agreement with the float model: this CPU has no VNNI, "
                     "and its int8 kernels add pairs of uint8 x int8 products in 16 bits, which 8-bit weights overflow; "
                     f"{other}.")
    return notes


def _lowered_notes(by: dict[str, BenchRow], where: str) -> list[str]:
    """A row the device ran below the file's precision (``fp32->bf16``) against the same file run as told."""
    notes = []
    for label, r in sorted(by.items()):
        base, _, ran = label.partition("->")
        if not ran or base not in by:
            continue
        agree = f"; top-1 agreement with the float model {r.agreement:.2f} %" if r.agreement is not None else ""
        notes.append(f"{label}: the device's default precision ({ran}) instead of the file's; p50 {r.p50_ms:.3g} vs "
                     f"{by[base].p50_ms:.3g} ms as {base} ({where}, ratio {r.p50_ms / by[base].p50_ms:.2f}){agree}.")
    return notes
