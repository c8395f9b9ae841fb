"""Runners whose native code can kill the process are tried once per machine in a child process.

LiteRT's ``CompiledModel`` dies with SIGILL on a Raspberry Pi 4 (ARMv8.0: the library uses ARMv8.2
instructions), and accelerator delegates and OpenVINO plugins are native code too: a crash there
would end ``edgetl bench`` with no table at all. So before ``bench`` opens such a runner in its own
process, a child process (``python -m edgetl.runtime.probe RUNTIME DEVICE``) opens the runner on the
tiny models in ``edgetl/resources`` (fp32 and int8, the layer kinds of a Lite0 export), runs them and
exits. A child killed by a signal or running past the timeout makes the runner a ``skipped`` row
with the reason (``SIGILL: illegal instruction``); a child that exits, even with an error, proves
the runner safe to try in-process (the row then reports its own error or ``skipped`` reason).

Results are cached per machine and library versions (CPU model and feature flags, Python, the
runtimes' versions) in ``<edgetl cache>/probes/<key>.json`` (written atomically), so the probe runs
once per machine and runtime; a timeout is not cached (the machine may only have been busy).
Delete the file to probe again. ``EDGETL_PROBE_TIMEOUT`` sets the timeout in seconds (default 300:
emulated ARM is slow to import the runtimes). ``EDGETL_PROBE_CRASH=RUNTIME[:DEVICE][=HOW],...`` (``HOW``:
``sigill`` by default, ``abort`` or ``hang``) makes the child crash on purpose: a test hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

#: (runtime, device) pairs whose runner is probed; None: every device of that runtime.
PROBED = {("litert-compiled", None), ("openvino", None), ("litert", "gpu")}
TIMEOUT_ENV = "EDGETL_PROBE_TIMEOUT"
CRASH_ENV = "EDGETL_PROBE_CRASH"
DEFAULT_TIMEOUT = 300.0
_PACKAGES = ("edgetl", "ai-edge-litert", "openvino", "onnxruntime", "numpy")
PROBE_MODELS = ("probe_fp32.tflite", "probe_int8.tflite")


def needs_probe(runtime: str, device: str | None) -> bool:
    """True for the runners whose native code is tried in a child process first."""
    return (runtime, None) in PROBED or (runtime, device) in PROBED


def _cpu_text() -> str:
    """The CPU model and feature lines of /proc/cpuinfo (what decides which instructions run)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    keep = ("model name", "flags", "features", "cpu part", "cpu architecture", "hardware")
    return "\n".join(sorted({ln.strip() for ln in text.splitlines() if ln.split(":")[0].strip().lower() in keep}))


def machine_key() -> str:
    """What the cache is keyed on: machine, CPU features, Python and the runtimes' versions (and the test hook)."""
    from edgetl.runtime.env import package_version

    parts = [platform.machine(), platform.python_version(), _cpu_text(), os.environ.get(CRASH_ENV, "")]
    parts += [f"{p}={package_version(p)}" for p in _PACKAGES]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_file() -> Path:
    from edgetl.models.weights import cache_dir

    return cache_dir() / "probes" / f"{machine_key()}.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, entry: dict[str, Any]) -> None:
    from edgetl.report import write_json

    doc = _load(path)  # re-read: another bench may have probed another runtime meanwhile
    doc[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, doc)
    except OSError:
        pass  # a read-only cache only costs a probe next time


def signal_reason(returncode: int) -> str:
    """``-4`` (or a shell's ``132``) -> ``SIGILL: illegal instruction``."""
    num = -returncode if returncode < 0 else returncode - 128
    try:
        sig = signal.Signals(num)
    except ValueError:
        return f"exit status {returncode}"
    desc = (signal.strsignal(sig) or "").split(":")[0].strip()
    return f"{sig.name}: {desc[:1].lower() + desc[1:]}" if desc else sig.name


def probe(runtime: str, device: str | None, timeout: float | None = None) -> str | None:
    """None when ``runtime`` on ``device`` survives a run in a child process here; else why not (one line).

    Cached per machine and library versions (see the module docstring); a timeout is not cached.
    """
    dev = (device or "cpu").lower()
    key = f"{runtime}:{dev}"
    path = cache_file()
    hit = _load(path).get(key)
    if isinstance(hit, dict) and "crash" in hit:
        return _reason(runtime, dev, hit["crash"], path) if hit["crash"] else None
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    cmd = [sys.executable, "-m", "edgetl.runtime.probe", runtime, dev]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired:
        return f"{runtime} ({dev}) did not finish a tiny test model in {timeout:g} s in a child process (not cached: retried next time)"
    secs = round(time.perf_counter() - t0, 2)
    crash = signal_reason(proc.returncode) if proc.returncode < 0 or proc.returncode > 128 else None
    _store(path, key, {"crash": crash, "returncode": proc.returncode, "seconds": secs,
                       "probed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "child": _last_line(proc.stdout)})
    return _reason(runtime, dev, crash, path) if crash else None


def _reason(runtime: str, dev: str, crash: str, path: Path) -> str:
    return f"{crash} in {runtime} ({dev}) on a tiny test model in a child process; not run here (cached in {path})"


def _last_line(raw: bytes) -> str:
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the child must import this edgetl (a worktree on PYTHONPATH, or the installed one)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


# --------------------------------------------------------------------------- the child


def _crash_hook(runtime: str, dev: str) -> None:
    for item in os.environ.get(CRASH_ENV, "").split(","):
        target, _, how = item.strip().partition("=")
        if target not in (runtime, f"{runtime}:{dev}"):
            continue
        if how == "hang":
            time.sleep(3600)
        elif how == "abort":
            os.abort()
        os.kill(os.getpid(), signal.SIGILL)


def _open(runtime: str, dev: str, path: Path, precision: str | None) -> Any:
    if runtime == "litert-compiled":
        from edgetl.runtime.litert_compiled import CompiledModelRunner

        return CompiledModelRunner(path, threads=1, accelerator=dev)
    if runtime == "openvino":
        from edgetl.runtime.openvino_runner import OpenVINORunner

        return OpenVINORunner(path, threads=1, device=dev, inference_precision=precision)
    from edgetl.runtime.tflite_runner import TFLiteRunner

    return TFLiteRunner(path, threads=1, use_gpu=dev == "gpu")


def child(runtime: str, dev: str) -> int:
    """Open and run the tiny models; print one JSON line. Exits 0 whenever the process survives."""
    _crash_hook(runtime, dev)
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    done = []
    for name in PROBE_MODELS:
        for precision in (("f32", None) if runtime == "openvino" else (None,)):
            with resources.as_file(resources.files("edgetl.resources") / name) as path:
                try:
                    r = _open(runtime, dev, path, precision)
                    r.predict(pixels)
                    r.timer(pixels)()
                    if hasattr(r, "close"):
                        r.close()
                except Exception as exc:  # noqa: BLE001 - a clean error is not a crash: the row will report it
                    print(json.dumps({"status": "error", "model": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
                    return 0
            done.append(name + (f" ({precision or 'default'})" if runtime == "openvino" else ""))
    print(json.dumps({"status": "ok", "ran": done}))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1], sys.argv[2]))
