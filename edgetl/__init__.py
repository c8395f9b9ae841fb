"""edgetl: transfer learning to the edge, proven with numbers.

Importing this package is cheap: TensorFlow, ONNX Runtime and LiteRT are only
imported by the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
