"""Per-layer int8 error report: which layers of one int8 model add the quantization error.

Every number is an error measured *in quantization steps of that layer's own output tensor*
(``rmse_scale`` = RMS error / scale). A layer that only rounds shows about
:data:`ROUNDING_NOISE_STEPS` (0.29, the RMS of a uniform error over one step); a layer whose
calibrated range clips real activations, or whose weights quantize badly, shows whole steps or more.

Two engines, one row format:

* TFLite: :func:`tflite_layer_report` runs TensorFlow's ``QuantizationDebugger``, whose
  ``NumericVerify`` ops compare each quantized op with the float op applied to the *same*
  (quantized) input: the error each layer adds, not the error it inherits.
  :func:`tflite_denylisted_model` rebuilds the int8 model with chosen layers kept in float.
* ONNX: :func:`onnx_layer_report` runs the QDQ int8 model in ONNX Runtime and, to measure the
  same per-layer quantity, runs each quantized node's float twin (float weights) on the int8
  model's own dequantized inputs. It also compares with the float model's activations
  (``total_rmse_scale``, ``sqnr_db``): the error accumulated up to that tensor.

A row's ``name`` is the key the engine's exclusion option takes: the TFLite debugger's
``denylisted_nodes`` or ONNX Runtime's ``quantize_static(nodes_to_exclude=...)``.
:func:`rank`, :func:`summary_line`, :func:`write_report` and :func:`plot_report` work on rows of either.

TensorFlow and ONNX Runtime are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.errors import EdgetlError, first_line
from edgetl.export.tflite import (  # noqa: F401 - re-exported: the TFLite quantization steps live with the converter
    _debug_converter,
    float_op_outputs,
    representative_dataset,
    tflite_calibrated_model,
    tflite_denylisted_model,
)

#: RMS of an error uniform over one quantization step (1/sqrt(12)): a layer that only rounds.
ROUNDING_NOISE_STEPS = 1.0 / math.sqrt(12.0)
#: Errors above this many steps are more than rounding (plotted red).
NOTABLE_STEPS = 1.0

# ONNX Runtime's quantizer renames a graph output ``y`` it quantizes: the producing node then
# writes ``y_QuantizeLinear_Input`` and the DequantizeLinear after it writes ``y``.
_ORT_QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"


# --------------------------------------------------------------------------- TFLite


def _debugger(conv: Any, debug_pixels: np.ndarray, nodes: Sequence[str] | None = None, affine: Any = None,
              calibrated: bytes | None = None) -> Any:
    import tensorflow as tf

    if debug_pixels is None or len(debug_pixels) == 0:
        raise EdgetlError("quantization report: debug_pixels is empty")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(nodes) if nodes else None)
    with warnings.catch_warnings():
        # The debugger runs TensorFlow's own (deprecated) Interpreter; its warning says nothing about the model.
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
        try:
            if calibrated is not None:
                # the instrumented model the debugger would build from the converter, from a calibration
                # already made (the converter path calibrates again)
                from tensorflow.lite.python import convert as tf_convert

                debug_model = tf_convert.mlir_quantize(
                    calibrated, disable_per_channel=conv._experimental_disable_per_channel,  # noqa: SLF001
                    fully_quantize=options.fully_quantize, enable_numeric_verify=True,
                    denylisted_ops=options.denylisted_ops, denylisted_nodes=options.denylisted_nodes)
                return tf.lite.experimental.QuantizationDebugger(
                    quant_debug_model_content=bytes(debug_model), debug_dataset=representative_dataset(debug_pixels, affine),
                    debug_options=options)
            return tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=representative_dataset(debug_pixels, affine), debug_options=options)
        except Exception as exc:  # noqa: BLE001 - converter errors are long MLIR dumps: keep one line
            first = first_line(exc, 300)
            raise EdgetlError(f"TFLite quantization debugger failed: {type(exc).__name__}: {first}") from None


def tflite_layer_report(converter_factory: Callable[[], Any], calib_pixels: np.ndarray | None,
                        debug_pixels: np.ndarray, affine: Any = None,
                        calibrated: bytes | None = None) -> list[dict[str, Any]]:
    """Measure how much quantization error each op of a full-int8 TFLite model adds.

    Use it to find the few layers worth keeping in float (:func:`tflite_denylisted_model`)
    when an int8 model disagrees with the float one. Costs one conversion plus one pass
    over ``debug_pixels`` with an instrumented model.

    Args:
        converter_factory: returns a *fresh*, fully configured ``tf.lite.TFLiteConverter`` for
            full-int8 (optimizations and representative dataset set, as
            :func:`edgetl.export.tflite.convert` does). Fresh, because the debugger changes the
            converter it is given.
        calib_pixels: uint8 (N, H, W, 3) calibration images that replace the converter's
            representative dataset (e.g. to see how another calibration set moves the error);
            None keeps the factory's.
        debug_pixels: uint8 (N, H, W, 3) images the errors are measured on.
        affine: as for :func:`tflite_denylisted_model`.
        calibrated: :func:`tflite_calibrated_model` of the same factory (and ``calib_pixels`` None):
            measured on that calibration instead of calibrating again.

    Returns:
        One dict per quantized op, in graph order: ``name`` (output tensor name: the key of
        ``denylisted_nodes``), ``op``, ``rmse_scale`` (RMS error in quantization steps; about
        0.29 is pure rounding), ``mean_error_scale`` (bias in steps), ``max_abs_error`` (in the
        tensor's real units), ``scale``, ``index`` (position in graph order).

    Raises:
        EdgetlError: the converter is not set up for int8, or conversion failed.
    """
    if calibrated is not None and calib_pixels is not None:
        raise EdgetlError("quantization report: pass calib_pixels or a calibrated model, not both")
    dbg = _debugger(_debug_converter(converter_factory, calib_pixels, affine), debug_pixels, affine=affine,
                    calibrated=calibrated)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # nanmean over a metric with no value
        dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = []
    for rec in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(rec["scale"])
        step = scale if scale > 0 else float("nan")
        rows.append({
            "name": rec["tensor_name"],
            "op": rec["op_name"],
            "rmse_scale": math.sqrt(max(float(rec["mean_squared_error"]), 0.0)) / step,
            "mean_error_scale": float(rec["mean_error"]) / step,
            "max_abs_error": float(rec["max_abs_error"]),
            "scale": scale,
            "index": len(rows),
        })
    if not rows:
        raise EdgetlError("TFLite quantization debugger found no quantized op to measure")
    return rows


# --------------------------------------------------------------------------- ONNX


def _ort_activations(qmodel: Any) -> dict[str, dict[str, Any]]:
    """Activation QuantizeLinear nodes of a QDQ model, by their int8 output tensor.

    Each: ``q_tensor`` (the QuantizeLinear's float input in the int8 graph), ``tensor`` (the same
    tensor's name in the float graph), ``int8`` (its output), ``scale``, ``zero_point``.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    consts = {n.output[0]: n for n in qmodel.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        for a in consts[name].attribute if name in consts else ():
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None

    found: dict[str, dict[str, Any]] = {}
    for node in qmodel.graph.node:
        src = node.input[0] if node.input else ""
        if node.op_type != "QuantizeLinear" or src in inits or src in consts:
            continue  # weights are quantized offline; only activations are measured
        scale = value(node.input[1]) if len(node.input) > 1 else None
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1 or (zp is not None and zp.size != 1) or float(scale.reshape(-1)[0]) <= 0:
            continue  # activations are per-tensor in quantize_static; without a scale nothing to dequantize
        found[node.output[0]] = {
            "q_tensor": src,
            "tensor": src[: -len(_ORT_QUANT_INPUT_SUFFIX)] if src.endswith(_ORT_QUANT_INPUT_SUFFIX) else src,
            "int8": node.output[0],
            "scale": float(scale.reshape(-1)[0]),
            "zero_point": float(zp.reshape(-1)[0]) if zp is not None else 0.0,
        }
    return found


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` that also returns the tensors ``names`` (type left to the runtime)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
            have.add(n)
    return m


def _session(model: Any, threads: int | None) -> Any:
    from edgetl.errors import ModelFileError
    from edgetl.runtime.onnx_runner import session

    try:
        return session(model.SerializeToString(), threads)
    except ModelFileError as exc:
        raise EdgetlError(f"quantization report: {exc}") from None


# A twin is the float subgraph between the int8 node's inputs and its output: usually the node
# itself, plus an activation the quantizer folded into the int8 node (Conv -> Clip). Longer
# chains mean the graphs do not line up; such a row falls back to the accumulated error.
_MAX_TWIN_NODES = 8


def _twins(fmodel: Any, qmodel: Any, acts: dict[str, dict[str, Any]],
           targets: list[dict[str, Any]]) -> tuple[list[Any], dict[str, tuple[str, str]], set[str]]:
    """Float twins of the int8 nodes, fed with what the int8 model fed the real nodes.

    Returns ``(nodes, feeds, tensors)``: copies of float-model nodes computing ``local::<tensor>``
    for each target tensor in ``tensors``; ``feeds`` maps each graph input of the twins to
    ``("int8", <int8 tensor>)`` (dequantize it), ``("value", <tensor>)`` (a float tensor of the
    int8 model) or ``("input", <name>)`` (the model input).
    """
    import onnx

    f_const = {i.name for i in fmodel.graph.initializer} | {
        n.output[0] for n in fmodel.graph.node if n.op_type == "Constant"}
    f_prod = {o: n for n in fmodel.graph.node for o in n.output}
    f_index = {id(n): i for i, n in enumerate(fmodel.graph.node)}
    q_const = {i.name for i in qmodel.graph.initializer} | {
        n.output[0] for n in qmodel.graph.node if n.op_type == "Constant"}
    q_prod = {o: n for n in qmodel.graph.node for o in n.output}
    q_inputs = {i.name for i in qmodel.graph.input}

    nodes, feeds, covered = [], {}, set()
    for t in targets:
        qnode = q_prod[t["q_tensor"]]
        # What the int8 node consumed, under its float-graph name.
        cut: dict[str, tuple[str, str]] = {}
        for qi in qnode.input:
            if not qi or qi in q_const:
                continue
            dq = q_prod.get(qi)
            if dq is not None and dq.op_type == "DequantizeLinear":
                if dq.input[0] in acts:
                    cut[acts[dq.input[0]]["tensor"]] = ("int8", dq.input[0])
                # else: a weight, stored quantized; the twin takes the float model's own weight
            elif qi in q_inputs:
                cut[qi] = ("input", qi)
            else:
                cut[qi] = ("value", qi)
        # Walk the float graph back from the target to that cut.
        chain, in_chain, stack, seen, ok = [], set(), [t["tensor"]], set(), True
        while stack and ok:
            x = stack.pop()
            if x in seen or x in cut or x in f_const or not x:
                continue
            seen.add(x)
            node = f_prod.get(x)
            if node is None or len(chain) >= _MAX_TWIN_NODES:
                ok = False
                break
            if id(node) not in in_chain:
                in_chain.add(id(node))
                chain.append(node)
                stack.extend(node.input)
        if not ok or not chain:
            continue
        prefix = f"local::{t['tensor']}::"
        inner = {o for n in chain for o in n.output if o}
        for node in sorted(chain, key=lambda n: f_index[id(n)]):  # the float graph's order is topological
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name = prefix + node.name
            del twin.input[:]
            for i in node.input:
                if i in cut:
                    key = cut[i]
                    feed = f"feed::{key[0]}::{key[1]}"
                    feeds[feed] = key
                    twin.input.append(feed)
                else:
                    twin.input.append(prefix + i if i in inner else i)
            del twin.output[:]
            twin.output.extend(f"local::{o}" if o == t["tensor"] else (prefix + o if o else "") for o in node.output)
            nodes.append(twin)
        covered.add(t["tensor"])
    return nodes, feeds, covered


def _twin_model(fmodel: Any, nodes: list[Any], feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> Any:
    import onnx

    used = {i for n in nodes for i in n.input}
    consts = [n for n in fmodel.graph.node if n.op_type == "Constant" and n.output[0] in used]
    graph = onnx.helper.make_graph(
        consts + nodes, "quant_report_twins",
        [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), None)
         for k, v in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[i for i in fmodel.graph.initializer if i.name in used],
    )
    model = onnx.helper.make_model(graph, opset_imports=list(fmodel.opset_import))
    model.ir_version = fmodel.ir_version
    return model


class _Acc:
    """Running sums for one tensor, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.err2 = self.err = self.max_abs = 0.0
        self.tot2 = self.sig2 = 0.0

    def add(self, q: np.ndarray, ref: np.ndarray, flt: np.ndarray) -> None:
        q64, f64 = q.astype(np.float64), flt.astype(np.float64)
        d = q64 - ref.astype(np.float64)
        self.n += d.size
        self.err2 += float(np.sum(d * d))
        self.err += float(np.sum(d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        e = q64 - f64
        self.tot2 += float(np.sum(e * e))
        self.sig2 += float(np.sum(f64 * f64))


def onnx_layer_report(fp32_model_path: str | Path, int8_model_path: str | Path, debug_pixels: np.ndarray,
                      input_name: str = "image", threads: int | None = None) -> list[dict[str, Any]]:
    """Measure how much quantization error each quantized node of an ONNX QDQ int8 model adds.

    Use it to pick ``nodes_to_exclude`` for ``quantize_static`` when an int8 ONNX model
    disagrees with the float one. The int8 model runs in ONNX Runtime with edgetl's session
    options (``session.x64quantprecision=1``). Each quantized activation, dequantized, is
    compared with (a) its float twin: the float model's layer (float weights, plus an
    activation the quantizer folded into the int8 node) run on the int8 model's own inputs to
    that node: the error this node adds, as TFLite's ``NumericVerify`` measures it; and (b) the
    float model's activation: the error accumulated up to there.

    Note: fetching a QuantizeLinear output (any extra consumer does) stops ONNX Runtime from
    fusing the Conv/MatMul/Add groups around it into ``QLinear*`` kernels, so while measuring
    those run as the QDQ reference (float op on dequantized values, then quantize), not as the
    integer kernels a plain session uses. The two can differ by rounding of the requantization
    (on edgetl's tiny test model the final outputs were bit-identical over 200 images).

    Args:
        fp32_model_path: the float model the int8 one was quantized from (before or after
            ``quant_pre_process``: tensor names are matched, and it keeps them).
        int8_model_path: the QDQ model from ``quantize_static`` (:func:`edgetl.export.onnx.quantize`).
        debug_pixels: uint8 (N, H, W, 3) images, fed one at a time as float32 pixels [0, 255].
        input_name: the models' input.
        threads: ONNX Runtime intra-op threads (default: the cores this process may use).

    Returns:
        One dict per quantized activation, in the float graph's order: ``name`` (the int8
        graph's node that produced it, named as in the graph ``quantize_static`` was given: the
        key of ``nodes_to_exclude``; ``quant_pre_process`` names a fused node anew, e.g.
        ``.../MatMul/MatMulAddFusion`` for a Dense layer's MatMul + Add), ``op``, ``tensor``,
        ``rmse_scale`` (error this node adds, in quantization steps; about 0.29 is pure
        rounding), ``mean_error_scale`` (its bias in steps), ``max_abs_error``,
        ``total_rmse_scale`` (error vs the float model, in steps), ``sqnr_db``
        (10*log10(sum x^2 / sum (x - xq)^2), x the float model's activation; inf when
        identical), ``scale``, ``local`` (False: no twin could be cut from the float
        graph and ``rmse_scale`` is the accumulated error), ``index`` (row position).

    Raises:
        EdgetlError: a model cannot be read or run, or the models share no quantized tensor.
    """
    import onnx

    pixels = np.asarray(debug_pixels)
    if pixels.ndim != 4 or len(pixels) == 0:
        raise EdgetlError(f"quantization report: debug_pixels must be (N, H, W, 3) images, got shape {pixels.shape}")
    try:
        fmodel = onnx.load(str(fp32_model_path))
        qmodel = onnx.load(str(int8_model_path))
    except Exception as exc:  # noqa: BLE001
        raise EdgetlError(f"quantization report: cannot read the ONNX models: {type(exc).__name__}: {exc}") from None
    f_order = {o: i for i, n in enumerate(fmodel.graph.node) for o in n.output}
    q_prod = {o: n for n in qmodel.graph.node for o in n.output}
    acts = _ort_activations(qmodel)
    # Rows: activations a node computes (not the model input) that the float model also has.
    targets = sorted((a for a in acts.values() if a["q_tensor"] in q_prod and a["tensor"] in f_order),
                     key=lambda a: f_order[a["tensor"]])
    if not targets:
        raise EdgetlError(f"quantization report: no quantized activation of {Path(int8_model_path).name} "
                          f"is a tensor of {Path(fp32_model_path).name} (not the float model it came from?)")

    twins, feed_keys, covered = _twins(fmodel, qmodel, acts, targets)
    int8_needed = {t["int8"] for t in targets} | {k[1] for k in feed_keys.values() if k[0] == "int8"}
    values = {k[1] for k in feed_keys.values() if k[0] == "value"}
    # Fetched: QuantizeLinear outputs (the int8 codes, dequantized below exactly as
    # DequantizeLinear does) and the unquantized tensors the twins need.
    q_sess = _session(_with_outputs(qmodel, sorted(int8_needed | values)), threads)
    f_sess = _session(_with_outputs(fmodel, [t["tensor"] for t in targets]), threads)
    t_sess = None
    q_names = [o.name for o in q_sess.get_outputs()]
    f_names = [o.name for o in f_sess.get_outputs()]

    accs = {t["tensor"]: _Acc() for t in targets}
    for i in range(len(pixels)):
        x = pixels[i : i + 1].astype(np.float32)
        try:
            qv = dict(zip(q_names, q_sess.run(None, {input_name: x})))
            fv = dict(zip(f_names, f_sess.run(None, {input_name: x})))
        except Exception as exc:  # noqa: BLE001
            raise EdgetlError(f"quantization report: ONNX Runtime failed: {type(exc).__name__}: "
                              f"{first_line(exc, 300)}") from None
        # DequantizeLinear's own arithmetic: (q - zero_point) * scale in float32.
        dq = {k: (qv[k].astype(np.float32) - np.float32(acts[k]["zero_point"])) * np.float32(acts[k]["scale"])
              for k in int8_needed}
        local: dict[str, np.ndarray] = {}
        if twins:
            feeds = {name: dq[src] if kind == "int8" else (x if kind == "input" else qv[src])
                     for name, (kind, src) in feed_keys.items()}
            if t_sess is None:
                # Built once the first image has run: the twins' inputs take the real values' types.
                t_sess = _session(_twin_model(fmodel, twins, feeds, [f"local::{c}" for c in sorted(covered)]), threads)
            local = {o.name[len("local::"):]: v for o, v in zip(t_sess.get_outputs(), t_sess.run(None, feeds))}
        for t in targets:
            accs[t["tensor"]].add(dq[t["int8"]], local.get(t["tensor"], fv[t["tensor"]]), fv[t["tensor"]])

    rows = []
    for t in targets:
        a, step = accs[t["tensor"]], t["scale"]
        node = q_prod[t["q_tensor"]]
        n = max(a.n, 1)
        rows.append({
            "name": node.name,
            "op": node.op_type,
            "tensor": t["tensor"],
            "rmse_scale": math.sqrt(a.err2 / n) / step,
            "mean_error_scale": a.err / n / step,
            "max_abs_error": a.max_abs,
            "total_rmse_scale": math.sqrt(a.tot2 / n) / step,
            "sqnr_db": (10.0 * math.log10(a.sig2 / a.tot2) if a.tot2 > 0 else math.inf) if a.sig2 > 0 else float("nan"),
            "scale": step,
            "local": t["tensor"] in covered,
            "index": len(rows),
        })
    return rows


# --------------------------------------------------------------------------- reading the rows


def rank(rows: Sequence[dict[str, Any]], k: int) -> list[str]:
    """The ``k`` layer names that add the most error (highest ``rmse_scale``), worst first.

    Ready to pass to ``denylisted_nodes`` / ``nodes_to_exclude``. NaN rows sort last.
    """
    def key(r: dict[str, Any]) -> float:
        v = r.get("rmse_scale")
        return -math.inf if v is None or math.isnan(v) else float(v)

    names: list[str] = []
    for r in sorted(rows, key=key, reverse=True):  # a node with two quantized outputs has two rows
        if r["name"] not in names:
            names.append(r["name"])
    return names[: max(int(k), 0)]


def short_name(name: str) -> str:
    """A readable label for a long converter name (full names stay in the JSON).

    ``functional_1/block0_relu_1/Relu6;functional_1/block0_conv_1/convolution`` ->
    ``block0_relu_1/Relu6``: the first fused name, without the model scope.
    """
    first = name.split(";")[0]
    parts = first.split("/")
    return "/".join(parts[1:3]) if len(parts) >= 3 else first


def summary_line(rows: Sequence[dict[str, Any]], k: int = 3) -> str:
    """One line for a log: the worst ``k`` layers and the median, in quantization steps.

    E.g. ``worst layers: block1_relu_1/Relu6 2.71 steps, stem_normalize_1/Sub 0.50 steps;
    median 0.31 steps over 7 layers``.
    """
    vals = [float(r["rmse_scale"]) for r in rows if r.get("rmse_scale") is not None and math.isfinite(r["rmse_scale"])]
    if not vals:
        return "no quantized layer measured"
    top: dict[str, float] = {}  # a node with two quantized outputs: its worse one
    for r in rows:
        v = r.get("rmse_scale")
        if v is not None and math.isfinite(v) and v > top.get(r["name"], -math.inf):
            top[r["name"]] = float(v)
    worst = ", ".join(f"{short_name(n)} {top[n]:.2f} steps" for n in rank(rows, k) if n in top)
    return f"worst layers: {worst}; median {statistics.median(vals):.2f} steps over {len(vals)} layers"


def _finite(v: Any) -> Any:
    # JSON has no NaN or Infinity: write null (an identical layer's SQNR is infinite).
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _finite(v.item())
    return v


def write_report(path_json: str | Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Write the rows as JSON (atomically), with the summary line and the worst names on top.

    Non-finite numbers become null, so any JSON reader takes the file.
    """
    from edgetl.report import write_json

    write_json(path_json, {
        "title": title,
        "summary": summary_line(rows),
        "rounding_noise_steps": ROUNDING_NOISE_STEPS,
        "worst": rank(rows, 5),
        "layers": [{k: _finite(v) for k, v in r.items()} for r in rows],
    })


def plot_report(path_png: str | Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Bar chart of ``rmse_scale`` per layer in graph order, to see at a glance which layers stand out.

    Log scale (errors run from below the 0.29-step rounding noise, dashed, to hundreds of steps);
    bars over :data:`NOTABLE_STEPS` are red.
    """
    from edgetl.plots import _plt, _save

    plt = _plt()
    n = len(rows)
    floor = 0.01  # an exact layer (0 steps) still gets a visible stub on the log scale
    vals = [max(float(r["rmse_scale"]), floor) if r.get("rmse_scale") is not None and math.isfinite(r["rmse_scale"])
            else floor for r in rows]
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * n + 2), 30.0), 4.5))
    ax.bar(range(n), vals, color=["tab:red" if v > NOTABLE_STEPS else "tab:blue" for v in vals])
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor, top=max(max(vals, default=1.0) * 2, 1.0))
    ax.axhline(ROUNDING_NOISE_STEPS, color="gray", ls="--", lw=1, label=f"rounding noise ({ROUNDING_NOISE_STEPS:.2f})")
    if n <= 80:  # beyond that the labels overlap: the JSON has them
        ax.set_xticks(range(n), [short_name(r["name"]) for r in rows], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("RMS error added (quantization steps)")
    ax.set_title(f"{title}\n{summary_line(rows, 1)}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path_png)
