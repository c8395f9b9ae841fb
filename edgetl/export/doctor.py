"""The quantization doctor: when an int8 artifact loses too much accuracy, try remedies in order.

TFLite int8: (1) more calibration images, (2) int16x8 (16-bit activations, 8-bit weights),
(3) quantization-aware training. ONNX int8: (1) more calibration images, (2) per-tensor
instead of per-channel weights, (3) Entropy and (4) Percentile calibration.

Every attempt is written to a scratch folder, verified like any artifact, and reported.
The best attempt that meets the budget replaces the int8 file (same precision) or is
saved under its own format name (int16x8, qat_int8); the report says which remedy won.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgetl.export.formats import FORMATS
from edgetl.quant import QuantizationConfig


def _remedies(ctx: Any, art: Any) -> list[tuple[str, str, QuantizationConfig | None]]:
    """(remedy name, format name, quantization) in the order they are tried."""
    cfg = ctx.config
    n_train = len(ctx.train_samples)
    used = int(art.quantization.get("calib_samples_used") or cfg.calib_samples)
    more = min(n_train, max(2 * used, 1000))
    out: list[tuple[str, str, QuantizationConfig | None]] = []
    base = cfg.int8_quant()
    if art.format == "tflite_int8":
        if more > used:
            out.append((f"more calibration images ({more})", "tflite_int8", base.with_(calib_samples=more)))
        out.append(("int16x8 (16-bit activations, 8-bit weights)", "tflite_int16x8",
                    QuantizationConfig.for_int16x8(cfg.calib_samples, seed=cfg.seed)))
        out.append(("quantization-aware training", "tflite_qat", None))
    else:
        if more > used:
            out.append((f"more calibration images ({more})", "onnx_int8", base.with_(calib_samples=more)))
        out.append(("per-tensor weights", "onnx_int8", base.with_(per_channel=False)))
        out.append(("Entropy calibration", "onnx_int8", base.with_(calib_method="entropy")))
        out.append(("Percentile calibration (99.999)", "onnx_int8", base.with_(calib_method="percentile")))
    return out


def _score(a: Any) -> tuple[float, float, int]:
    v = a.verification
    return (v.accuracy or 0.0, v.agreement, -a.size_bytes)


def run_doctor(ctx: Any, result: Any, art: Any) -> dict[str, Any]:
    """Try the remedies for one int8 artifact; update ``result.artifacts`` with the winner.

    Returns:
        A report: target, budget, the original's accuracy, every attempt, and the winner.
    """
    from edgetl.export.api import make_artifact

    explicit = bool(ctx.config.doctor)
    report: dict[str, Any] = {
        "target": art.format,
        "budget_pt": ctx.config.max_drop,
        "original": {"accuracy": art.verification.accuracy if art.verification else None, "drop": art.drop,
                     "agreement": art.verification.agreement if art.verification else None},
        "attempts": [],
        "winner": None,
    }
    scratch = Path(tempfile.mkdtemp(prefix=".doctor-", dir=ctx.out_dir))
    try:
        candidates = []
        for remedy, fmt_name, quant in _remedies(ctx, art):
            fmt = FORMATS[fmt_name]
            if fmt_name == "tflite_qat" and any(a.format == "tflite_qat" and a.error is None for a in result.artifacts):
                # QAT was already requested with --qat: use that artifact instead of training twice.
                cand = next(a for a in result.artifacts if a.format == "tflite_qat")
            else:
                ctx.say(f"  doctor: trying {remedy} ...")
                cand = make_artifact(ctx, fmt, scratch / f"{len(candidates)}_{fmt.file_name(ctx.run.backbone)}", quant, remedy)
            entry = {"remedy": remedy, "format": fmt_name, "error": cand.error, "drop": cand.drop,
                     "within_budget": cand.within_budget, "export_s": round(cand.export_s, 2), "size_bytes": cand.size_bytes,
                     "accuracy": cand.verification.accuracy if cand.verification else None,
                     "agreement": cand.verification.agreement if cand.verification else None}
            report["attempts"].append(entry)
            ctx.say(f"  doctor: {remedy}: " + (f"failed: {cand.error}" if cand.error else
                                               f"accuracy {entry['accuracy']:.2f}% (drop {cand.drop:+.2f} pt), agreement {entry['agreement']:.1f}%"))
            if cand.error is None and cand.within_budget:
                candidates.append(cand)
                if not explicit:
                    break  # automatic mode: the first remedy that meets the budget is enough
        pool = ([art] if art.within_budget else []) + candidates
        if pool:
            best = max(pool, key=_score)
            if best is art:
                report["winner"] = {"remedy": None, "format": art.format, "path": art.path,
                                    "note": "the original artifact already meets the budget and is the best"}
            else:
                _install(ctx, result, art, best)
                report["winner"] = {"remedy": best.remedy, "format": best.format, "path": best.path}
                ctx.say(f"  doctor: kept {Path(best.path).name} ({best.remedy})")
        else:
            report["winner"] = None
            report["note"] = "no remedy met the budget"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _install(ctx: Any, result: Any, original: Any, best: Any) -> None:
    """Move the winning file into place and record it in the result."""
    fmt = FORMATS[best.format]
    final = ctx.out_dir / fmt.file_name(ctx.run.backbone)
    if Path(best.path).parent != ctx.out_dir:
        os.replace(best.path, final)  # same folder tree: an atomic rename
        best.path = str(final)
    if best.format == original.format:
        idx = result.artifacts.index(original)
        best.notes.append(f"replaced the plain PTQ artifact (drop {original.drop} pt) via the quantization doctor")
        result.artifacts[idx] = best
    else:
        existing = [i for i, a in enumerate(result.artifacts) if a.format == best.format]
        if existing:
            result.artifacts[existing[0]] = best
        else:
            result.artifacts.append(best)
