"""Runners for Keras, TFLite and ONNX models behind one protocol (see :mod:`edgetl.runtime.base`).

Importing this package imports neither TensorFlow nor ONNX Runtime.
"""
