"""The plan: one job per (target, runtime, device, threads), with what this machine can run probed once
(crash-prone runners in a child process first), and opening a job's runner."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgetl.bench.results import INTEGER_PRECISIONS, RUNTIMES, BenchSettings, Target, _precision_hint, parse_runtimes
from edgetl.runtime.env import RuntimeUnavailableError


@dataclass
class _Job:
    target: Target
    threads: int | None
    device: str  # cpu, gpu, npu, cuda, ...
    providers: tuple[str, ...] | None = None  # ONNX Runtime
    skip: str | None = None
    runtime: str = ""
    ov_default: str | None = None  # OpenVINO: run at the device's default precision (e.g. "bf16"); None: f32


class _Availability:
    """What this machine can run, probed once per plan (each probe is cheap but not free).

    Runners whose native code could kill the process (:mod:`edgetl.runtime.probe`) are first run
    on a tiny model in a child process, once per machine; OpenVINO even before its devices are listed.
    """

    def __init__(self, targets: Sequence[Target], settings: BenchSettings):
        from edgetl.runtime import env

        self.ort = env.onnxruntime_providers()
        self.gpu_ok, self.gpu_reason = (False, "")
        if any(t.format == "tflite" for t in targets) and settings.gpu is not False:
            self.gpu_ok, self.gpu_reason = env.litert_gpu_delegate()
        from edgetl.runtime.openvino_runner import available_devices

        self._probes: dict[tuple[str, str], str | None] = {}
        self.openvino_crash: str | None = None
        wanted = settings.runtimes is None or any(r == "openvino" for r, _ in parse_runtimes(settings.runtimes))
        if wanted and env.package_version("openvino") and any(t.format in ("tflite", "onnx") for t in targets):
            self.openvino_crash = self.probe("openvino", "cpu")  # listing the devices loads the plugins
        self.openvino = [] if self.openvino_crash else available_devices()  # [] when OpenVINO is not installed
        self.mediapipe = importlib.util.find_spec("mediapipe") is not None  # importing it is left to the row
        self._ov_default: dict[str, str | None] = {}

    def probe(self, runtime: str, device: str) -> str | None:
        """None when the runner survives a child-process run here (cached per machine), else the reason."""
        if (runtime, device) not in self._probes:
            from edgetl.runtime.probe import probe

            self._probes[(runtime, device)] = probe(runtime, device)
        return self._probes[(runtime, device)]

    def openvino_default(self, device: str) -> str | None:
        """The precision an OpenVINO device runs by default (CPU with AMX/avx512_bf16: bf16; GPU: f16)."""
        if device not in self._ov_default:
            from edgetl.runtime.openvino_runner import default_precision

            self._ov_default[device] = default_precision(device)
        return self._ov_default[device]


def has_tflite_metadata(path: str | Path) -> bool:
    """Whether a ``.tflite`` file has a ``TFLITE_METADATA`` entry (MediaPipe's ImageClassifier needs one for a
    float input): the entry's name is stored as a plain string in the flatbuffer."""
    try:
        return b"TFLITE_METADATA" in Path(path).read_bytes()
    except OSError:
        return False


def _runtime_jobs(t: Target, runtime: str, device: str | None, settings: BenchSettings, av: _Availability,
                  explicit: bool) -> list[_Job]:
    """The jobs of one target on one runtime (``device`` None: the runtime's default devices)."""
    cpu = [th for th in settings.threads]
    if runtime == "tensorflow":
        return [_Job(t, max(settings.threads), "cpu", runtime=runtime)]
    if runtime == "litert":
        jobs = [_Job(t, th, "cpu", runtime=runtime) for th in cpu] if device in (None, "cpu") else []
        if device == "gpu" or (device is None and (settings.gpu is True or (settings.gpu is None and av.gpu_ok))):
            jobs.append(_Job(t, None, "gpu", skip=None if av.gpu_ok else f"skipped: {av.gpu_reason}", runtime=runtime))
        return jobs
    if runtime == "mediapipe":  # one row per file: ImageClassifierOptions has no thread setting
        skip = None if av.mediapipe else "skipped: MediaPipe is not installed (pip install 'edgetl[mediapipe]')"
        if skip is None and not has_tflite_metadata(t.path):
            if not explicit:
                return []  # not a file for the phone's client (run_bench notes it)
            skip = "skipped: no TFLite metadata in this file (MediaPipe needs it; edgetl export writes it)"
        return [_Job(t, None, "cpu", runtime=runtime, skip=skip)]
    if runtime == "litert-compiled":
        if device in (None, "cpu"):
            return [_Job(t, th, "cpu", runtime=runtime) for th in cpu]
        return [_Job(t, None, device, runtime=runtime)]  # compiled strictly: fails (skipped) without that accelerator
    if runtime == "openvino":
        if av.openvino_crash:
            return [_Job(t, None, device or "cpu", runtime=runtime, skip=f"skipped: {av.openvino_crash}")]
        if not av.openvino:
            if not explicit:
                return []  # not installed: a note, not a skipped row per file
            return [_Job(t, None, device or "cpu", runtime=runtime,
                         skip="skipped: OpenVINO is not installed (pip install 'edgetl[openvino]')")]
        have = sorted({d.split(".")[0].lower() for d in av.openvino})
        devices = [device] if device else have
        jobs = []
        for dev in devices:
            if dev != "auto" and dev not in have:
                jobs.append(_Job(t, None, dev, runtime=runtime,
                                 skip=f"skipped: OpenVINO device {dev.upper()} not available here (have: {', '.join(av.openvino)})"))
                continue
            # the file's own precision (forced f32), then, where the device would run lower, its default as its own row
            lower = av.openvino_default(dev) if dev != "auto" and _precision_hint(t) not in INTEGER_PRECISIONS else None
            for ov_default in (None, lower) if lower not in (None, "f32") else (None,):
                if dev == "cpu":
                    jobs += [_Job(t, th, "cpu", runtime=runtime, ov_default=ov_default) for th in cpu]
                else:
                    jobs.append(_Job(t, None, dev, runtime=runtime, ov_default=ov_default))
        return jobs
    # onnxruntime: one job per execution provider
    from edgetl.runtime.onnx_runner import provider_name

    if device:
        names = [provider_name(device)]
    elif settings.providers:
        names = [provider_name(p) for p in settings.providers]
    else:
        names = ["CPUExecutionProvider"] + [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in av.ort]
    jobs = []
    for name in names:
        dev = name.replace("ExecutionProvider", "").lower()
        if name not in av.ort:
            have = ", ".join(a.replace("ExecutionProvider", "") for a in av.ort) or "onnxruntime not installed"
            jobs.append(_Job(t, None, dev, (name,), skip=f"skipped: {name} not available (have: {have})", runtime=runtime))
        elif name == "CPUExecutionProvider":
            jobs += [_Job(t, th, "cpu", (name,), runtime=runtime) for th in cpu]
        else:
            jobs.append(_Job(t, max(settings.threads), dev, (name,), runtime=runtime))
    return jobs


def plan_jobs(targets: Sequence[Target], settings: BenchSettings) -> list[_Job]:
    """One job per (target, runtime, device/provider, thread count); unavailable ones become skip jobs.

    Without ``settings.runtimes`` every runtime that reads the file and is installed here runs it
    (OpenVINO only when installed); with it, exactly the runtimes (and devices) named.
    """
    av = _Availability(targets, settings)
    explicit = settings.runtimes is not None
    selected = parse_runtimes(settings.runtimes) if explicit else tuple((r, None) for r in RUNTIMES)
    jobs: list[_Job] = []
    for t in targets:
        for runtime, device in selected:
            if t.format in RUNTIMES[runtime][0]:
                jobs += _runtime_jobs(t, runtime, device, settings, av, explicit)
    from edgetl.runtime.probe import needs_probe

    for j in jobs:  # a runner that would crash this process is a skipped row, never a dead bench
        if j.skip is None and needs_probe(j.runtime, j.device):
            reason = av.probe(j.runtime, j.device)
            j.skip = f"skipped: {reason}" if reason else None
    return jobs


def _open(job: _Job) -> Any:
    from edgetl.runtime.loader import keras_file_runner, runner_for

    t = job.target
    if job.runtime == "tensorflow":
        _set_tf_threads(job.threads)
        return runner_for(t.run_dir) if t.run_dir else keras_file_runner(t.path)
    if job.runtime == "litert":
        return runner_for(t.path, threads=job.threads, use_gpu=job.device == "gpu")
    if job.runtime == "onnxruntime":
        return runner_for(t.path, threads=job.threads, providers=job.providers)
    if job.runtime == "openvino":
        return runner_for(t.path, threads=job.threads, runtime=job.runtime, device=job.device,
                          inference_precision=None if job.ov_default else "f32")
    return runner_for(t.path, threads=job.threads, runtime=job.runtime, device=job.device)


def _set_tf_threads(n: int | None) -> None:
    try:
        import tensorflow as tf
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailableError(f"TensorFlow is not installed ({type(exc).__name__}); Keras rows need the 'train' extra") from None
    if n:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already initialized: the row records the setting actually in force
