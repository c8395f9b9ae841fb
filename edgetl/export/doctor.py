"""The quantization doctor: when an int8 file misses the budget, measure where the error comes from and fix it.

The budget is two numbers (``--max-drop`` accuracy points and ``--min-agreement`` top-1
agreement with the Keras model); an accuracy gain never excuses low agreement.

Remedies, tried in this order (pure 8-bit remedies first: the file stays all-int8 and as fast as the
plain one; then the ones that keep layers in float), each written to a scratch folder:

1. (``--doctor`` only: it never shipped in automatic mode and cost up to 84 s) round-to-nearest weights
   instead of GPTQ (:mod:`edgetl.export.ptq`), in case GPTQ fitted the
   calibration images too closely; TFLite: the other activation ranges (the default takes each tensor's
   0.01 / 99.99 % percentiles, the remedy the converter's min/max, or the other way round with
   ``calib_method="minmax"``; :mod:`edgetl.export.act_ranges`); ONNX: Percentile calibration,
   per-tensor weights, and (``--doctor`` only: it collapsed agreement on sign_digits) Entropy calibration;
2. more calibration images;
3. selective mixed precision: the per-layer report (:mod:`edgetl.export.quant_report`) ranks the
   layers by the error they add, and the top 1, 3, 8 ... (among those whose float weights keep the
   file within ``MAX_SIZE_RATIO`` of the float32 size) are kept in float while the rest of the
   graph stays 8-bit (TFLite: first the input normalization ops alone, then with them; the debugger's
   ``denylisted_nodes``, uint8 input and metadata kept; ONNX: ``nodes_to_exclude``);
4. only when no post-training 8-bit candidate meets the budget: quantization-aware training (TFLite; BN
   folded, distilled from the float model, at most ``qat_time`` seconds of training: its own limit, not
   the doctor's, stated in the output), the last 8-bit remedy; then int16x8.

When the plain file missed the budget, a remedy that keeps every layer 8-bit (step 1, 2 and QAT) is
shipped only if it is also *shown* better than the plain file on the selection images: among the
images where the two differ, it must fix significantly more of the plain file's disagreements than it
adds (one-sided sign test, ``LATERAL_ALPHA``); export.json records ``vs_plain`` (fixed, broken, p-value).
Those remedies are as coarse as the plain file, so a one- or two-image gain is chance. Remedies that add
precision (layers in float, int16x8) need only the budget.

The budget's accuracy is the run's selection objective (``objective`` in config.json): ``accuracy``, or
``balanced`` (mean per-class recall: the drop check then compares balanced accuracies).

The doctor does not grade its own choice. The verification images are split in two disjoint
halves (alternate files of each class): every candidate is checked against the budget and chosen
on the *selection* half; the winner (and the plain file) are then measured on the *report* half,
or on the data's test split when it has one. export.json records both figures with their image counts.

The candidates within budget are timed against each other with :func:`edgetl.runtime.timing.paired_latency`
(1 thread, interleaved repeats); one is called faster only when its paired p50 ratio clears
``FASTER_MARGIN``. Among those no slower than the fastest beyond that margin, the higher selection
agreement wins, then the pure-int8 file, then fewer float layers. Automatic mode stops at the
first remedy within budget; ``--doctor`` tries them all. Two remedies that produce the same model
are reported as identical, not as two results.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.export.artifacts import layer_report, make_artifact, prepare_images, verify_artifact
from edgetl.export.verify import accuracy, compare, run_file
from edgetl.formats import FORMATS
from edgetl.quant import QuantizationConfig
from edgetl.runtime.timing import FASTER_MARGIN, paired_latency, quick_latency

#: How many of the worst layers selective mixed precision keeps in float, tried in this order.
FLOAT_LAYER_STEPS = (1, 3, 8)
#: Automatic mode does not verify (or write) a fallback whose measured p50 is more than this many
#: times the plain int8 file's: int16x8 runs on reference kernels (measured 31x slower than int8 on
#: x86), which no latency budget absorbs. ``--doctor`` verifies it anyway.
MAX_FALLBACK_SLOWDOWN = 2.0
#: The layers kept in float may take an int8 file to at most this fraction of the float32 size
#: (a plain int8 file is ~0.28-0.30): the int8 promise is a ~4x smaller file, not only a faithful one.
MAX_SIZE_RATIO = 0.40
#: bytes a float weight adds over an int8 one, with a margin: 3 bytes each by count, but a sign_digits file
#: with 8 float layers chosen by that count came out at 0.405 of the fp32 file (per-tensor overhead)
FLOAT_WEIGHT_BYTES = 3.3
QAT_REMEDY = "quantization-aware training"
#: the ONNX remedy that drops the overflow fix (:attr:`edgetl.quant.QuantizationConfig.overflow_fix`)
EIGHT_BIT_REMEDY = "8-bit conv/dense weights (no overflow fix)"
RANGES_REMEDY = "percentile activation ranges (99.99)"
MINMAX_REMEDY = "min/max activation ranges (the converter's own)"
#: seconds per calibration image of a TFLite histogram pass (measured 45-58 s for 301 images on the loaded 2-core Xeon)
RANGES_S_PER_IMAGE = 0.2
#: epochs (over qat_samples images) the doctor's QAT remedy may train, within the export's ``qat_time``
QAT_DOCTOR_EPOCHS = 10
#: When the plain file missed the budget, an 8-bit remedy that keeps every layer 8-bit (other rounding,
#: ranges, calibration, QAT) replaces it only if, on the selection images where the two files differ,
#: it fixes significantly more of the plain file's disagreements than it adds (one-sided sign test at
#: this level). Such remedies are as coarse as the plain file, so a gain of an image or two is chance:
#: on sign_digits round-to-nearest agreed on 2 more of 310 val images than GPTQ and on 6 fewer of the
#: 314 test images. Remedies that add precision (layers kept in float, int16x8) need only the budget.
LATERAL_ALPHA = 0.05


def sign_test(fixed: int, broken: int) -> float:
    """One-sided sign-test p-value of ``fixed`` wins against ``broken`` losses (ties dropped)."""
    from math import comb

    n = fixed + broken
    return sum(comb(n, k) for k in range(fixed, n + 1)) / 2.0 ** n if n else 1.0


def _lateral_gain(plain: Any, cand: Any) -> dict[str, Any] | None:
    """Paired comparison of a candidate with the plain file on the same selection images (None: not comparable)."""
    a, b = getattr(plain, "agrees", None), getattr(cand, "agrees", None)
    if a is None or b is None or len(a) != len(b):
        return None
    fixed, broken = int(np.sum(~a & b)), int(np.sum(a & ~b))
    p = sign_test(fixed, broken)
    return {"fixed": fixed, "broken": broken, "p_value": round(p, 4), "significant": p <= LATERAL_ALPHA}


#: the automatic doctor's QAT trains for at most what is left of this many seconds from the export's start,
#: less ``QAT_RESERVE`` (never less than ``QAT_MIN_TIME``, never more than ``qat_time``): the whole
#: ``export --int8`` then ends within about 6 minutes even when QAT is reached; ``--doctor`` gives QAT
#: its full ``qat_time``
AUTO_EXPORT_TIME = 360.0
#: what the export spends beside QAT's training once QAT starts (its set-up, conversion and verification:
#: 66 s measured for Lite0 on 2 cores; then the doctor's report), plus the process start-up the export's
#: own clock does not see
QAT_RESERVE = 90.0
#: the least QAT training the automatic doctor gives when it reaches QAT (a late start still trains)
QAT_MIN_TIME = 30.0


def _qat_seconds(ctx: Any, explicit: bool) -> tuple[float, str]:
    """(seconds of QAT training, why that many): ``qat_time``; in automatic mode at most what is left of
    ``AUTO_EXPORT_TIME`` from the export's start after ``QAT_RESERVE``, and at least ``QAT_MIN_TIME``."""
    full = float(ctx.config.qat_time)
    if explicit:
        return full, ""
    left = AUTO_EXPORT_TIME - (time.perf_counter() - ctx.started) - QAT_RESERVE
    if left >= full:
        return full, ""
    secs = min(full, max(QAT_MIN_TIME, left))
    return secs, (f"; what is left of the automatic export's {AUTO_EXPORT_TIME:.0f} s, less {QAT_RESERVE:.0f} s for "
                  f"conversion and verification; --doctor gives it {full:.0f} s")


def _qat_epochs(ctx: Any) -> int:
    return max(ctx.config.qat_epochs, QAT_DOCTOR_EPOCHS)


def _objective(ctx: Any) -> str:
    """The run's selection objective (config.json ``objective``): ``accuracy`` (default) or ``balanced``."""
    obj = str((getattr(ctx.run, "config", None) or {}).get("objective", "accuracy"))
    return obj if obj in ("accuracy", "balanced") else "accuracy"


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall in percent over the classes present in ``labels`` (edgetl/metrics.py)."""
    from edgetl.metrics import balanced_accuracy as balanced

    probs = np.asarray(probs)
    b = balanced(labels, probs.argmax(1), probs.shape[1]) if probs.ndim == 2 and len(probs) else None
    return 100.0 * b if b is not None else 0.0


def _verify(ctx: Any, art: Any) -> Any:
    """:func:`verify_artifact`; with the ``balanced`` objective the drop (and so the budget) compares
    balanced accuracies, the Keras model's and the file's, on the same images."""
    verify_artifact(ctx, art)
    if _objective(ctx) != "balanced" or art.error or art.verification is None or len(ctx.val_px) == 0:
        return art
    from edgetl.export.artifacts import within_budget

    try:
        probs = run_file(art.path, ctx.val_px, ctx.config.threads)
    except Exception as exc:  # noqa: BLE001 - it ran once already; a second failure is recorded, not raised
        art.notes.append(f"balanced accuracy not measured: {type(exc).__name__}: {str(exc)[:200]}")
        return art
    art.drop = round(balanced_accuracy(ctx.ref, ctx.val_y) - balanced_accuracy(probs, ctx.val_y), 4)
    art.within_budget = within_budget(art, ctx.config)
    return art


def _budget_ok(a: Any) -> bool:
    return a.error is None and a.within_budget is True


def _timing(ctx: Any, art: Any) -> None:
    """Short latency measurement of one file (1 thread), with the timer ``edgetl bench`` uses."""
    if art.path is None or art.latency is not None or len(ctx.val_px) == 0:
        return
    try:
        art.latency = quick_latency(art.path, ctx.val_px[:1])
    except Exception as exc:  # noqa: BLE001 - a file that cannot be timed is not shipped by speed
        art.notes.append(f"doctor timing failed: {type(exc).__name__}: {str(exc)[:200]}")


def _layer_report(ctx: Any, art: Any) -> list[dict[str, Any]]:
    """The per-layer rows for ``art`` (computed by the export, or now)."""
    rows = ctx.reports.get(art.format)
    if rows is None:
        rows = layer_report(ctx, art)
    return rows or []


def _remedies(ctx: Any, art: Any, stage: int) -> list[tuple[str, str, QuantizationConfig | None]]:
    """(remedy, format name, quantization) of one stage: 0 = 8-bit remedies, 1 = the expensive fallbacks."""
    cfg = ctx.config
    n_train = len(ctx.train_samples)
    used = int(art.quantization.get("calib_samples_used") or cfg.calib_samples)
    more = min(n_train, max(2 * used, 1000))
    base = cfg.int8_quant()
    out: list[tuple[str, str, QuantizationConfig | None]] = []
    tflite = art.format == "tflite_int8"
    if stage == 0:
        from edgetl.export.quant_report import rank

        # pure 8-bit remedies first: an all-int8 file at the plain file's speed
        if not tflite and base.overflow_fix:
            # the overflow fix's 7-bit conv/dense weights cost a little agreement on some runs; the 8-bit file
            # is exact on VNNI/ARM CPUs and, with the session option in its metadata, on every x86 CPU
            out.append((EIGHT_BIT_REMEDY, "onnx_int8", base.with_(overflow_fix=False)))
        if base.rounding == "gptq" and cfg.doctor:
            # GPTQ minimises each layer's output error on the calibration images; if those are
            # unrepresentative, the converters' own rounding can be the better file: verified like the rest.
            # Only with --doctor: in the 13 automatic-doctor attempts recorded in benchmarks/results/int8_seeds_*
            # (sign_digits, its 1-channel copy, hymenoptera; TFLite and ONNX) it never shipped (its best: fixes 4,
            # adds 2, p = 0.34), and it cost 8-84 s each, the time the later remedies and QAT need.
            out.append(("round-to-nearest weights (no GPTQ)", art.format, base.with_(rounding="nearest")))
        if tflite:
            # the other activation-range choice (edgetl.export.act_ranges): the calibration pass is cached;
            # percentile ranges take one more pass over the calibration images (the histograms)
            from edgetl.export.act_ranges import resolve

            if resolve(base.calib_method, "tflite") == "minmax":
                out.append((RANGES_REMEDY, art.format, base.with_(calib_method="percentile")))
            else:
                out.append((MINMAX_REMEDY, art.format, base.with_(calib_method="minmax")))
        if not tflite:
            out.append(("Percentile calibration (99.999)", "onnx_int8", base.with_(calib_method="percentile")))
            out.append(("per-tensor weights", "onnx_int8", base.with_(per_channel=False)))
            if cfg.doctor:
                # only when asked for every remedy: measured on sign_digits, ORT's Entropy ranges gave 77 %
                # agreement on two runs, and in automatic mode its time kept the float-layer remedies from running
                out.append(("Entropy calibration", "onnx_int8", base.with_(calib_method="entropy")))
        if more > used:  # a calibration pass over up to 1000 images: the time limit may skip it
            out.append((f"more calibration images ({more})", art.format, base.with_(calib_samples=more)))
        # then layers kept in float: fewest first
        rows = _layer_report(ctx, art)
        lead = tuple(_input_ops(rows)) if tflite else ()
        if lead:
            out.append(("input normalization in float", art.format, base.with_(float_nodes=lead)))
        ranked = _affordable(ctx, art, rank(rows, len(rows)))
        for k in FLOAT_LAYER_STEPS:
            if k <= len(ranked) and k <= len(rows) - 1:
                names = tuple(dict.fromkeys(lead + tuple(ranked[:k])))
                what = "input normalization and " if lead else ""
                out.append((f"keep {what}{k} worst layer{'s' if k > 1 else ''} in float", art.format,
                            base.with_(float_nodes=names)))
    elif tflite:
        out.append((QAT_REMEDY, "tflite_qat", None))
        out.append(("int16x8 (16-bit activations, 8-bit weights)", "tflite_int16x8",
                    QuantizationConfig.for_int16x8(cfg.calib_samples, seed=cfg.seed)))
    return out


def _layer_params(ctx: Any, name: str) -> int:
    """Weights of the Keras layer a converter node name comes from (``.../block6_project_conv_1/BiasAdd;...``), 0 if unknown."""
    for part in name.split(";"):
        for seg in part.split("/"):
            try:
                return int(ctx.model.get_layer(re.sub(r"_\d+$", "", seg)).count_params())
            except (ValueError, AttributeError):
                continue
    return 0


def _affordable(ctx: Any, art: Any, ranked: list[str]) -> list[str]:
    """``ranked`` (worst first) without the layers whose float weights would take the file past
    ``MAX_SIZE_RATIO`` of the float32 size: each float weight costs ``FLOAT_WEIGHT_BYTES`` more than an int8 one."""
    fp32_bytes = 4 * int(ctx.model.count_params())
    room = (MAX_SIZE_RATIO * fp32_bytes - art.size_bytes) / FLOAT_WEIGHT_BYTES
    if room <= 0:  # file overhead dominates (tiny models): the plain file is over the ratio already
        return list(ranked)
    out, used = [], 0
    for name in ranked:
        n = _layer_params(ctx, name)
        if used + n <= room:
            out.append(name)
            used += n
    return out


def _input_ops(rows: list[dict[str, Any]]) -> list[str]:
    """The elementwise ops between the image input and the first convolution (the folded-in normalization).

    In TFLite each is requantized on its own, and its ADD rescales two int8 operands: measured on
    sign_digits, a constant bias of half a step that the stem convolution amplifies; keeping just
    these two cheap ops in float took agreement from 94.5 % to 97.4 %.
    """
    lead = []
    for r in rows:
        if r.get("op") in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            return lead
        if r.get("op") in ("MUL", "ADD", "SUB", "DIV"):
            lead.append(r["name"])
    return []


def _selection_and_report(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """(context verifying on the selection images, the report set): disjoint images.

    With a test split in the data: select on every verification image, report on test. Otherwise the
    verification images split in two (alternate files of each class, in their sorted order).
    """
    y = np.asarray(ctx.val_y)
    if getattr(ctx, "test_samples", None):
        from edgetl.data import stratified_sample
        from edgetl.runtime.keras_runner import KerasRunner

        picked = stratified_sample(ctx.test_samples, ctx.config.verify_samples, seed=ctx.config.seed)
        px, ty, _ = prepare_images(picked, ctx.run.preprocessing, store=True)  # edgetl.pixels: RAM or a temp file
        if len(px):
            ref = KerasRunner(ctx.model, ctx.run.labels, ctx.run.preprocessing).predict(px)
            return ctx, {"split": "test", "px": px, "y": ty, "ref": ref}
    sel, rep = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        sel += list(idx[0::2])
        rep += list(idx[1::2])
    sel_i, rep_i = np.array(sorted(sel), dtype=int), np.array(sorted(rep), dtype=int)
    sel_ctx = copy.copy(ctx)  # shallow: the caches (calibration, GPTQ, reports) stay shared
    sel_ctx.val_px, sel_ctx.val_y, sel_ctx.ref = ctx.val_px[sel_i], y[sel_i], ctx.ref[sel_i]
    sel_ctx.keras_acc = accuracy(ctx.ref[sel_i], y[sel_i]) if len(sel_i) else None
    return sel_ctx, {"split": "val, second half (odd files of each class)", "px": ctx.val_px[rep_i], "y": y[rep_i],
                     "ref": ctx.ref[rep_i]}


def _figures(v: Any) -> dict[str, Any]:
    return {"accuracy": v.accuracy, "agreement": v.agreement} if v is not None else {"accuracy": None, "agreement": None}


def _measure(ctx: Any, art: Any, rep: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and agreement of ``art`` on the report images (never used to choose)."""
    if art.path is None or len(rep["px"]) == 0:
        return {"accuracy": None, "agreement": None}
    try:
        return _figures(compare(run_file(art.path, rep["px"], ctx.config.threads), rep["ref"], rep["y"]))
    except Exception as exc:  # noqa: BLE001 - a report figure that cannot be measured is recorded as such
        return {"accuracy": None, "agreement": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _n_float(a: Any) -> int:
    return len(a.quantization.get("float_nodes") or ()) if isinstance(a.quantization, dict) else 0


def _choose(ctx: Any, candidates: list[Any], report: dict[str, Any]) -> Any:
    """The shipped candidate: among those not slower than the fastest beyond ``FASTER_MARGIN`` (paired,
    interleaved timing), the highest selection agreement, then pure int8, then fewer float layers,
    then the earlier remedy. The timing and the rule are recorded in ``report["timing"]``."""
    def preference(i: int) -> tuple:
        a = candidates[i]
        return (-(a.verification.agreement if a.verification else 0.0), _n_float(a), i)

    if len(candidates) == 1:
        return candidates[0]
    try:
        timing = paired_latency([c.path for c in candidates], ctx.val_px[:1])
    except Exception as exc:  # noqa: BLE001 - untimed: choose on agreement and simplicity alone
        report["timing"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return candidates[min(range(len(candidates)), key=preference)]
    names = [c.remedy or "original" for c in candidates]
    f = timing.fastest()
    tier = [i for i in range(len(candidates)) if not timing.faster(f, i)]
    best = min(tier, key=preference)
    for i, c in enumerate(candidates):
        c.latency = {**(c.latency or {}), "p50_ms": timing.p50(i), "paired": True}
    report["timing"] = {**timing.to_dict(names), "within_noise_of_fastest": [names[i] for i in tier],
                        "rule": f"fastest, where 'faster' means a paired p50 ratio below {1 - FASTER_MARGIN:g}; "
                                "within that: higher selection agreement, then pure int8, then fewer float layers"}
    return candidates[best]


def run_doctor(ctx: Any, result: Any, art: Any, deadline: float | None = None) -> dict[str, Any]:
    """Try the remedies for one int8 artifact; ship the best candidate within budget (see the module doc).

    ``deadline`` (``time.monotonic()``): a remedy starts only when its estimated time (what the
    doctor measured of the same kind so far, else the original file's export time; see
    :class:`_Costs`) fits before it, so cheaper remedies later in the order still run; the
    skipped ones are listed in the report (``not_tried``) and printed.

    Returns:
        A report: target, budget, the original's figures, every attempt (selection figures), the
        winner, and the selection and report figures with their image counts.
    """
    explicit = bool(ctx.config.doctor)
    sel_ctx, rep = _selection_and_report(ctx)
    plain = dataclasses.replace(art, verification=None, within_budget=None, drop=None, notes=list(art.notes))
    _verify(sel_ctx, plain)  # the plain file on the selection images: the bar every remedy is held to
    report: dict[str, Any] = {
        "target": art.format,
        "budget_pt": ctx.config.max_drop,
        "budget_agreement": ctx.config.min_agreement,
        "objective": _objective(ctx),
        "original": {"accuracy": art.verification.accuracy if art.verification else None, "drop": art.drop,
                     "agreement": art.verification.agreement if art.verification else None},
        "selection": {"split": "val" if rep["split"] == "test" else "val, first half (even files of each class)",
                      "images": int(len(sel_ctx.val_px)), "original": _figures(plain.verification)},
        "report": {"split": rep["split"], "images": int(len(rep["px"])), "original": _measure(ctx, art, rep)},
        "attempts": [],
        "winner": None,
    }
    scratch = Path(tempfile.mkdtemp(prefix=".doctor-", dir=ctx.out_dir))
    seen: dict[str, str] = {art.quantization.get("graph_sha256", ""): "original"}
    try:
        _timing(ctx, art)
        report["original"]["p50_ms"] = art.latency["p50_ms"] if art.latency else None
        # the plain file competes only when it met the budget on every verification image and on the selection half
        candidates = [plain] if _budget_ok(plain) and _budget_ok(art) else []
        plain_missed = not candidates  # then an all-8-bit remedy must be shown better, not just within budget
        costs = _Costs(ctx, art)
        not_tried: list[str] = []
        t_doctor = time.monotonic()
        for stage in (0, 1):
            if stage == 1 and candidates:
                break  # int16x8 and QAT only when nothing 8-bit met the budget
            remedies = _remedies(ctx, art, stage)
            for k, (remedy, fmt_name, quant) in enumerate(remedies):
                if not explicit and any(c is not plain for c in candidates):
                    break  # automatic mode: the first remedy within budget (pure int8 ones come first)
                # QAT, the last 8-bit remedy, has its own time limit (qat_time of training), not the doctor's:
                # the post-training remedies may use all of theirs and QAT is still reached
                if quant is not None and deadline is not None and costs.estimate(remedy, quant) > deadline - time.monotonic():
                    not_tried.append(remedy)  # would not finish in the time left: the next, cheaper one may
                    continue
                t_start = time.monotonic()
                fmt = FORMATS[fmt_name]
                if fmt_name == "tflite_qat" and any(a.format == "tflite_qat" and a.error is None for a in result.artifacts):
                    cand = next(a for a in result.artifacts if a.format == "tflite_qat")
                    cand = dataclasses.replace(cand, verification=None, within_budget=None, drop=None)
                    _verify(sel_ctx, cand)
                else:
                    left = sum(costs.estimate(r, q) for r, _, q in remedies[k:])
                    ctx.say(f"  doctor: [{k + 1}/{len(remedies)}] trying {remedy} ... "
                            f"({time.monotonic() - t_doctor:.0f} s so far, about {left:.0f} s left for this stage)")
                    if quant is None:  # QAT: its training time is what is left of the export's (see _qat_seconds)
                        qat_s, why = _qat_seconds(ctx, explicit)
                        report["qat_budget_s"] = qat_s
                        ctx.say(f"  doctor: post-training remedies missed the budget: {QAT_REMEDY}, at most "
                                f"{qat_s:.0f} s of training (up to {_qat_epochs(ctx)} epochs{why})")
                        sel_ctx.qat_seconds, sel_ctx.qat_epochs = qat_s, _qat_epochs(ctx)
                    try:
                        cand = make_artifact(sel_ctx, fmt, scratch / f"{len(report['attempts'])}_{fmt.file_name(ctx.run.backbone)}",
                                             quant, remedy, verify=False)
                    finally:
                        sel_ctx.qat_seconds = sel_ctx.qat_epochs = None
                    if _too_slow(ctx, art, cand, stage, explicit, report) or _too_big(ctx, result, art, cand, explicit, report):
                        continue
                    _verify(sel_ctx, cand)
                costs.record(remedy, quant, time.monotonic() - t_start)
                entry = {"remedy": remedy, "format": fmt_name, "error": cand.error, "drop": cand.drop,
                         "within_budget": cand.within_budget, "export_s": round(cand.export_s, 2),
                         "size_bytes": cand.size_bytes, "float_nodes": list(quant.float_nodes) if quant else [],
                         "accuracy": cand.verification.accuracy if cand.verification else None,
                         "notes": [n for n in cand.notes if n.startswith("QAT")],
                         "agreement": cand.verification.agreement if cand.verification else None}
                sha = cand.quantization.get("graph_sha256")
                if sha and sha in seen:
                    entry["identical_to"] = seen[sha]
                    ctx.say(f"  doctor: {remedy}: the same model as {seen[sha]} (no change)")
                    report["attempts"].append(entry)
                    continue
                if sha:
                    seen[sha] = remedy
                # an all-8-bit remedy against a plain file that missed the budget: a real gain, or chance?
                all_8bit = fmt_name == "tflite_qat" or (quant is not None and quant.mode == "int8" and not quant.float_nodes)
                gain = _lateral_gain(plain, cand) if plain_missed and all_8bit and _budget_ok(cand) else None
                if gain is not None:
                    entry["vs_plain"] = gain
                chance = gain is not None and not gain["significant"]
                if _budget_ok(cand) and not chance:
                    _timing(ctx, cand)
                    candidates.append(cand)
                entry["p50_ms"] = cand.latency["p50_ms"] if cand.latency else None
                report["attempts"].append(entry)
                ctx.say(f"  doctor: {remedy}: " + (f"failed: {cand.error}" if cand.error else
                                                   f"accuracy {entry['accuracy']:.2f}% (drop {cand.drop:+.2f} pt), "
                                                   f"agreement {entry['agreement']:.1f}% on {len(sel_ctx.val_px)} selection images"
                                                   + (f", p50 {entry['p50_ms']:.1f} ms" if entry.get("p50_ms") else "")
                                                   + (f" - within budget, but not shown better than the plain file (it fixes "
                                                      f"{gain['fixed']} of the plain file's disagreements and adds {gain['broken']}; "
                                                      f"sign test p = {gain['p_value']:.2f} > {LATERAL_ALPHA:g}): not shipped" if chance
                                                      else " - within budget" if _budget_ok(cand) else "")))
        if not_tried:
            report["not_tried"] = not_tried
            report["note"] = "the doctor's time limit (--doctor-time) left no time for these"
            ctx.say(f"  doctor: time limit: not tried: {', '.join(not_tried)} (--doctor-time N or --doctor to try them)")
        if candidates:
            _ship(ctx, result, art, plain, _choose(ctx, candidates, report), rep, report)
        else:
            report["note"] = "no remedy met the budget" + (f" ({report['note']})" if report.get("note") else "")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if rep["px"] is not ctx.val_px and hasattr(rep["px"], "close"):  # the test split's store: ours (a view has none)
            rep["px"].close()
    return report


def _ship(ctx: Any, result: Any, art: Any, plain: Any, best: Any, rep: dict[str, Any], report: dict[str, Any]) -> None:
    """Record the winner with its selection and report figures; install it when it is not the plain file."""
    report["selection"]["winner"] = _figures(best.verification)
    report["report"]["winner"] = report["report"]["original"] if best is plain else _measure(ctx, best, rep)
    p50 = best.latency["p50_ms"] if best.latency else None
    if best is plain:
        report["winner"] = {"remedy": None, "format": art.format, "path": art.path, "p50_ms": p50,
                            "note": "the original artifact meets the budget on the selection images and no candidate beats it"}
        art.latency = best.latency or art.latency
    else:
        _install(ctx, result, art, best)
        _verify(ctx, best)  # the table row: every verification image, like the other formats
        report["winner"] = {"remedy": best.remedy, "format": best.format, "path": best.path, "p50_ms": p50,
                            "plain_p50_ms": report["original"]["p50_ms"]}
        ctx.say(f"  doctor: kept {Path(best.path).name} ({best.remedy}"
                + (f", p50 {p50:.1f} ms vs plain {report['original']['p50_ms']:.1f} ms"
                   if p50 and report["original"]["p50_ms"] else "") + ")")
    r = report["report"]["winner"]
    if r.get("agreement") is not None:
        ctx.say(f"  doctor: on {report['report']['images']} report images ({report['report']['split']}), not used to choose: "
                f"agreement {r['agreement']:.1f}%" + (f", accuracy {r['accuracy']:.2f}%" if r.get("accuracy") is not None else ""))


class _Costs:
    """How long a remedy will take, from what the doctor has measured so far (conservative before that).

    Kinds: ``float`` (selective float; TFLite reuses the cached calibration, so a few seconds),
    ``calib`` (more calibration images: scales with the image count), ``qat`` (training), and
    ``convert`` (any other re-conversion: about the original file's export time).
    """

    def __init__(self, ctx: Any, art: Any):
        self.ctx, self.art = ctx, art
        self.used = max(1, int(art.quantization.get("calib_samples_used") or ctx.config.calib_samples))
        self.seen: dict[str, float] = {}

    def _kind(self, remedy: str, quant: QuantizationConfig | None) -> tuple[str, float]:
        """(kind, scale): a ``calib`` remedy's cost is per calibration image."""
        if quant is None:
            return "qat", 1.0
        if quant.float_nodes:
            return "float", 1.0
        if remedy.startswith("more calibration"):
            return "calib", quant.calib_samples / self.used
        if remedy == RANGES_REMEDY:
            return "ranges", 1.0
        if remedy == MINMAX_REMEDY:  # the cached calibration as it is: a ~1 s quantization, like a float selection
            return "float", 1.0
        return "convert", 1.0

    def estimate(self, remedy: str, quant: QuantizationConfig | None) -> float:
        kind, scale = self._kind(remedy, quant)
        if kind in self.seen:
            return self.seen[kind] * scale
        base = self.art.export_s + (self.art.verify_s or 0.0)
        if kind == "float" and self.art.format.startswith("tflite") and self.ctx.calibrated:
            return 5.0 + (self.art.verify_s or 0.0)
        if kind == "ranges" and self.ctx.calibrated:  # one histogram pass; the calibration is cached
            return RANGES_S_PER_IMAGE * self.used + 5.0 + (self.art.verify_s or 0.0)
        if kind == "qat":  # training is bounded by qat_time; then a conversion and a verification
            return base + self.ctx.config.qat_time
        return base * scale

    def record(self, remedy: str, quant: QuantizationConfig | None, seconds: float) -> None:
        kind, scale = self._kind(remedy, quant)
        self.seen[kind] = seconds / scale


def _too_big(ctx: Any, result: Any, art: Any, cand: Any, explicit: bool, report: dict[str, Any]) -> bool:
    """Automatic mode: a candidate whose file came out over ``MAX_SIZE_RATIO`` of the float32 file of its
    family (the written ``*_fp32`` file, else 4 bytes per parameter) is recorded and dropped unverified.
    :func:`_affordable` picks the float layers from a weight count, which misses per-tensor overhead:
    a sign_digits run shipped 8 float layers at 0.405 of the fp32 file. Where the plain int8 file ``art``
    is over the ratio already (tiny models, whose files are mostly overhead) the ratio does not apply."""
    if explicit or cand.error or not cand.size_bytes:
        return False
    family = cand.format.split("_")[0]
    ref = next((a.size_bytes for a in result.artifacts
                if a.format == f"{family}_fp32" and a.error is None and a.size_bytes), None)
    ref = ref or 4 * int(ctx.model.count_params())
    ratio = cand.size_bytes / ref
    if ratio <= MAX_SIZE_RATIO + 1e-9 or (art.size_bytes or 0) / ref > MAX_SIZE_RATIO:
        return False
    why = (f"{ratio:.3f} of the float32 file's size, over the {MAX_SIZE_RATIO:g} an int8 file may take: "
           "not verified, not written; --doctor verifies it anyway")
    report["attempts"].append({"remedy": cand.remedy, "format": cand.format, "error": None,
                               "export_s": round(cand.export_s, 2), "size_bytes": cand.size_bytes, "skipped": why})
    ctx.say(f"  doctor: {cand.remedy}: {why}")
    return True


def _too_slow(ctx: Any, art: Any, cand: Any, stage: int, explicit: bool, report: dict[str, Any]) -> bool:
    """Automatic mode, fallback stage: time the converted file first; one over ``MAX_FALLBACK_SLOWDOWN``
    x the plain file's p50, confirmed by a paired timing against the plain file, is recorded with its
    latency and dropped without verification."""
    plain = art.latency["p50_ms"] if art.latency else None
    if explicit or stage == 0 or cand.error or plain is None:
        return False
    _timing(ctx, cand)
    p50 = cand.latency["p50_ms"] if cand.latency else None
    if p50 is None or p50 <= MAX_FALLBACK_SLOWDOWN * plain:
        return False
    if getattr(art, "path", None) and getattr(cand, "path", None):
        # a single timing on a shared CPU can be a slow moment: confirm side by side (paired, interleaved)
        try:
            t = paired_latency([art.path, cand.path], ctx.val_px[:1])
            ratio = t.ratio(1, 0)
        except Exception:  # noqa: BLE001 - unconfirmed: the single timing stands
            ratio = None
        if ratio is not None:
            p50, plain = t.p50(1), t.p50(0)
            cand.latency = {**(cand.latency or {}), "p50_ms": p50, "paired_ratio_to_plain": round(ratio, 3)}
            if ratio <= MAX_FALLBACK_SLOWDOWN:
                return False
    why = (f"p50 {p50:.1f} ms is {p50 / plain:.0f}x the plain int8 file's {plain:.1f} ms "
           f"(over the {MAX_FALLBACK_SLOWDOWN:g}x limit): not verified, not written; --doctor verifies it anyway")
    report["attempts"].append({"remedy": cand.remedy, "format": cand.format, "error": None, "p50_ms": p50,
                               "export_s": round(cand.export_s, 2), "size_bytes": cand.size_bytes, "skipped": why})
    ctx.say(f"  doctor: {cand.remedy}: {why}")
    return True


def _install(ctx: Any, result: Any, original: Any, best: Any) -> None:
    """Move the winning file into place and record it in the result."""
    fmt = FORMATS[best.format]
    final = ctx.out_dir / fmt.file_name(ctx.run.backbone)
    if Path(best.path).parent != ctx.out_dir:
        os.replace(best.path, final)  # same folder tree: an atomic rename
        best.path = str(final)
    best.notes += [n for n in original.notes if n.startswith("per-layer report")]
    if best.format == original.format:
        idx = result.artifacts.index(original)
        best.notes.append(f"replaced the plain PTQ artifact (drop {original.drop} pt, agreement "
                          f"{original.verification.agreement:.2f}%) via the quantization doctor")
        result.artifacts[idx] = best
    else:
        existing = [i for i, a in enumerate(result.artifacts) if a.format == best.format]
        if existing:
            result.artifacts[existing[0]] = best
        else:
            result.artifacts.append(best)
