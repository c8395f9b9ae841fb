"""Writes edgetl/resources/probe_fp32.tflite and probe_int8.tflite: the tiny models that
:mod:`edgetl.runtime.probe` runs in a child process to learn whether a runner's native code survives
this machine. Needs TensorFlow (the train extra); run from the repository root:

    python scripts/make_probe_models.py

The layers are the kinds a Lite0 export uses (conv, depthwise conv, ReLU6, average pool, dense,
softmax), at 16 x 16 pixels, so each file is a few kB; fp32 with float input, int8 with uint8 in/out.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent.parent / "edgetl" / "resources"


def main() -> None:
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16, 16, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = tf.keras.layers.ReLU(6.0)(x)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = tf.keras.layers.ReLU(6.0)(x)
    x = tf.keras.layers.Conv2D(16, 1)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(4, activation="softmax")(x)
    model = tf.keras.Model(inp, out)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (OUT / "probe_fp32.tflite").write_bytes(conv.convert())
    rng = np.random.default_rng(0)

    def calib():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = calib
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    (OUT / "probe_int8.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    main()
