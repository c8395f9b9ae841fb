"""Quantization settings, made with named constructors.

>>> QuantizationConfig.for_int8(calib_samples=500)
>>> QuantizationConfig.for_float16()
>>> QuantizationConfig.for_dynamic()

One frozen dataclass that the TFLite and ONNX exporters both read, so a setting
(e.g. the number of calibration images) means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgetl.errors import UsageError

IO_TYPES = ("uint8", "int8", "float32")
CALIB_METHODS = ("minmax", "entropy", "percentile", "mse", "auto")
MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
#: how int8 weights are rounded: ``gptq`` (error-compensating, :mod:`edgetl.export.ptq`) or ``nearest``
ROUNDINGS = ("gptq", "nearest")


@dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize one artifact.

    Attributes:
        mode: ``float32`` (none), ``float16``, ``dynamic`` (int8 weights only),
            ``int8`` (full integer, calibrated) or ``int16x8`` (int16 activations, int8 weights).
        io_type: TFLite input/output type for full-integer models: ``uint8`` (default: raw
            image pixels go straight in, scale 1 / zero point 0), ``int8`` or ``float32``.
        calib_samples: training images used for calibration (stratified; all if fewer).
        per_channel: per-channel weight scales (ONNX; TFLite always uses per-channel conv weights).
        calib_method: activation ranges: ``minmax`` (the converters' own), ``mse`` or ``percentile``
            (per tensor from a histogram of the calibration images, :mod:`edgetl.export.act_ranges`;
            ONNX ``percentile`` is ONNX Runtime's own), ``entropy`` (ONNX only; TFLite keeps min/max),
            ``auto`` (what ``edgetl export`` uses: ``percentile`` for TFLite, ``minmax`` for ONNX; measured
            in the README, "Activation ranges").
        seed: seed of the stratified calibration sample.
        float_nodes: layers kept in float in an otherwise 8-bit file (selective mixed precision,
            chosen by the quantization doctor from the per-layer report): TFLite tensor names
            of the debugger's ``denylisted_nodes``, or ONNX node names for ``nodes_to_exclude``.
        rounding: int8 weight rounding: ``gptq`` (BN folded, then each kernel rounded so that
            its output error on calibration images is smallest; :mod:`edgetl.export.ptq`) or
            ``nearest`` (the converters' own round-to-nearest).
        rounding_samples: calibration images GPTQ measures each layer's inputs on.
        overflow_fix: ONNX int8 only: int8 weights that no x86 int8 kernel without VNNI can
            saturate on (its 16-bit sums of pairs of products): GPTQ keeps each pair of 1x1 conv / dense
            weights within budget and puts other convs on the 7-bit grid, depthwise keep 8 bits
            (:func:`edgetl.export.ptq.overflow_grid`): the file gives the same results with ONNX
            Runtime's default session options and on OpenVINO on every x86 CPU.
    """

    mode: str = "float32"
    io_type: str = "uint8"
    calib_samples: int = 300
    per_channel: bool = True
    calib_method: str = "minmax"
    seed: int = 0
    float_nodes: tuple[str, ...] = ()
    rounding: str = "nearest"
    rounding_samples: int = 64
    overflow_fix: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown quantization mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.io_type not in IO_TYPES:
            raise UsageError(f"--io-type must be one of {', '.join(IO_TYPES)}, got {self.io_type!r}")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        if self.rounding not in ROUNDINGS:
            raise UsageError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.rounding_samples < 1:
            raise UsageError(f"--rounding-samples must be at least 1, got {self.rounding_samples}")

    @property
    def needs_calibration(self) -> bool:
        return self.mode in ("int8", "int16x8")

    @classmethod
    def for_float32(cls) -> "QuantizationConfig":
        return cls(mode="float32")

    @classmethod
    def for_int8(cls, calib_samples: int = 300, io_type: str = "uint8", per_channel: bool = True,
                 calib_method: str = "minmax", seed: int = 0, rounding: str = "gptq",
                 rounding_samples: int = 64, overflow_fix: bool = False) -> "QuantizationConfig":
        """Full-integer int8, calibrated on ``calib_samples`` training images, GPTQ-rounded weights."""
        return cls(mode="int8", io_type=io_type, calib_samples=calib_samples, per_channel=per_channel,
                   calib_method=calib_method, seed=seed, rounding=rounding, rounding_samples=rounding_samples,
                   overflow_fix=overflow_fix)

    @classmethod
    def for_int16x8(cls, calib_samples: int = 300, seed: int = 0) -> "QuantizationConfig":
        """16-bit activations, 8-bit weights (TFLite); float32 input and output."""
        return cls(mode="int16x8", io_type="float32", calib_samples=calib_samples, seed=seed)

    @classmethod
    def for_float16(cls) -> "QuantizationConfig":
        return cls(mode="float16", io_type="float32")

    @classmethod
    def for_dynamic(cls) -> "QuantizationConfig":
        """Dynamic range: int8 weights, float activations, no calibration data."""
        return cls(mode="dynamic", io_type="float32")

    def with_(self, **changes) -> "QuantizationConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "io_type": self.io_type, "calib_samples": self.calib_samples,
                "per_channel": self.per_channel, "calib_method": self.calib_method, "seed": self.seed,
                "float_nodes": list(self.float_nodes), "rounding": self.rounding,
                "rounding_samples": self.rounding_samples, "overflow_fix": self.overflow_fix}
