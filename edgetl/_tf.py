"""Import TensorFlow without its C++ start-up chatter.

TF 2.21 logs oneDNN/CUDA notices through absl before ``TF_CPP_MIN_LOG_LEVEL`` is
consulted, so the only reliable way to keep a CLI's stderr readable is to point
file descriptor 2 at /dev/null while TensorFlow loads and probes devices.
A missing TensorFlow is left for the caller to report; ``edgetl --debug`` skips the silencing.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded use)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # triggers the CUDA probe messages now, silently
        except ImportError:
            # Base install (no TensorFlow): callers report what is missing in their own words.
            pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
