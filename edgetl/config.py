"""User-facing settings for training: frozen dataclasses, validated in one place.

Every setting has a default that reaches the accuracy targets in TARGETS.md with
EfficientNet-Lite0 (the measurements behind the defaults: ``benchmarks/results/defaults.md``);
the resolved config is saved in the run's ``config.json`` so a run can be reproduced and resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgetl.errors import UsageError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, LEGACY_RESIZE

STRATEGIES = ("feature-extraction", "fine-tune")


@dataclass(frozen=True)
class AugmentConfig:
    """Random image augmentation (applied to the uint8 pixels before the backbone).

    Attributes:
        enabled: master switch (``--no-augment`` turns it off).
        flip: random horizontal flip.
        rotation: max rotation as a fraction of a full turn (0.05 = +-18 degrees).
        zoom: max zoom in/out as a fraction of the image size (random crop + resize).
        brightness: max brightness shift as a fraction of the [0, 255] range.
        contrast: max contrast change factor.
        views: augmented views per training image embedded for the frozen-base phase
            (in addition to the clean image). Each view costs one forward pass of the base.
        resize: resize-robust views (``--no-augment-resize`` turns it off): each augmented view
            decodes the image again and resizes it the way a randomly drawn client does (MediaPipe's
            corner-mapped OpenCV warp, a half-pixel GPU sampler, or Pillow's antialiased bilinear,
            after a source crop of up to 2 % per side), so the model's top-1 does not hinge on which
            client resized the photo. Both strategies train on these views (feature extraction's head,
            fine-tuning's cached activations).
    """

    enabled: bool = True
    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    views: int = 2
    resize: bool = True

    def validate(self) -> None:
        for name, lo, hi in (("rotation", 0.0, 0.5), ("zoom", 0.0, 0.9), ("brightness", 0.0, 1.0), ("contrast", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise UsageError(f"augment {name} must be between {lo} and {hi}, got {v}")
        if not 0 <= self.views <= 16:
            raise UsageError(f"--augment-views must be between 0 and 16, got {self.views}")


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting (``edgetl train`` options map one to one).

    Attributes:
        data_dir: image folder (``train/<class>`` + ``val/<class>``, or ``<class>/``).
        backbone: registry name.
        weights: ``imagenet``, ``none`` or a weights file.
        strategy: ``feature-extraction`` (frozen base) or ``fine-tune`` (head, then top blocks).
        epochs: head epochs (frozen base, trained on cached embeddings).
        fine_tune_epochs: epochs with the top ``unfreeze`` blocks trainable.
        batch_size: images per step.
        lr: head learning rate.
        fine_tune_lr: peak learning rate of the fine-tune phase (None: ``lr * 0.1``).
        warmup_fraction: fraction of fine-tune steps spent warming the LR up (then cosine decay).
        weight_decay: AdamW decoupled weight decay (0 = Adam).
        head_l2: L2 penalty on the classifier weights, added to the loss (``head_l2 * sum(w**2)``)
            in both phases: with label smoothing off, the head converges to an L2-regularized
            logistic regression on the embeddings.
        dropout: dropout before the classifier.
        label_smoothing: label smoothing of the cross-entropy (0: off; it caps the confidence
            of a linear head on separable embeddings).
        val_split: validation fraction for the ``<class>/`` layout (stratified, seeded).
        seed: seed for every random choice (split, shuffles, augmentation, init).
        augment: augmentation settings.
        class_weights: ``auto`` (above ``imbalance_ratio``: the head is trained unweighted, with softened
            and with inverse-frequency class weights, and the best on the val ``objective`` is kept;
            see edgetl/imbalance.py), ``off``, ``sqrt`` (inverse square-root frequency) or ``on``
            (inverse frequency).
        imbalance_ratio: largest/smallest class-size ratio above which ``auto`` tries class weights.
        objective: what every choice on val maximises: ``accuracy`` (early stopping and the fine-tune
            keep/restore on the val cross-entropy) or ``balanced`` (on the class-balanced val
            cross-entropy, each class counting equally; the class-weight choice on balanced accuracy).
            ``accuracy`` by default: on sign_digits at 10:1 both objectives met the imbalance target
            and tied on a test split as unbalanced as training; ``balanced`` was 2.4 points higher on a
            balanced test split (benchmarks/results/imbalance_20261205-191031.md, -193449.md).
        unfreeze: number of top blocks to unfreeze (None: the backbone's default).
        patience: early stopping patience on val loss (epochs; 0 disables).
        out: run directory (None: ``runs/<name>``).
        name: run name (None: ``<data folder>-<backbone>``).
        overwrite: replace an existing run.
        resume: continue an interrupted run from its last complete checkpoint.
        max_pixels: decompression-bomb guard per image (0 disables).
        workers: decoding threads (None: CPU count).
        embed_engine: runs the frozen base for the cached passes: ``auto`` (ONNX Runtime on a CPU-only
            machine, checked against TensorFlow on the first batch; TensorFlow with a GPU), ``tensorflow``
            or ``onnxruntime``.
        cache_limit_mb: RAM budget of the cache of frozen-part activations for fine-tuning (every
            copy it makes counted); above it the cache spills to disk, 0 turns it off (the fine-tune
            phase then runs the whole model on images streamed from the files).
        verbose: 0 quiet, 1 progress bars, 2 one line per epoch.
        image_size: (height, width) input size instead of the backbone's own (``--image-size``);
            it flows through ``config.json`` to export, predict and bench.
        resize: the deployment client's resize (``--resize``, one of :data:`edgetl.preprocess.RESIZES`):
            training, evaluation, export verification, ``predict`` and ``bench`` resize with it, and the
            exported files record it. ``mediapipe`` (MediaPipe Tasks' CPU path, what the Android/iOS/Python
            client runs for uint8 models) by default; runs saved before the setting used ``pillow``.
    """

    data_dir: str
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    strategy: str = "fine-tune"
    epochs: int = 20
    fine_tune_epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    fine_tune_lr: float | None = 3e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    head_l2: float = 0.015
    dropout: float = 0.2
    label_smoothing: float = 0.0
    val_split: float = 0.2
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    class_weights: str = "auto"
    imbalance_ratio: float = 1.5
    objective: str = "accuracy"
    unfreeze: int | None = None
    patience: int = 5
    out: str | None = None
    name: str | None = None
    overwrite: bool = False
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int | None = None
    embed_engine: str = "auto"
    cache_limit_mb: int = 2048
    verbose: int = 1
    image_size: tuple[int, int] | None = None
    resize: str = "mediapipe"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
            object.__setattr__(self, "image_size", (self.image_size, self.image_size))
        elif isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

    def validate(self) -> "TrainConfig":
        """Check every value; returns self so calls chain.

        Raises:
            UsageError: a value is out of range (the CLI exits with code 2).
        """
        if self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        ints = (
            ("epochs", "--epochs", 1, 10_000),
            ("fine_tune_epochs", "--fine-tune-epochs", 0, 10_000),
            ("batch_size", "--batch-size", 1, 65_536),
            ("patience", "--patience", 0, 10_000),
            ("seed", "--seed", 0, 2**31 - 1),
            ("max_pixels", "--max-pixels", 0, 10**12),
            ("cache_limit_mb", "cache_limit_mb", 0, 10**7),
            ("verbose", "verbose", 0, 2),
        )
        for attr, opt, lo, hi in ints:
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UsageError(f"{opt} must be an integer between {lo} and {hi}, got {v!r}")
        floats = (
            ("lr", "--lr", 0.0, 10.0, False),
            ("warmup_fraction", "warmup_fraction", 0.0, 1.0, True),
            ("weight_decay", "--weight-decay", 0.0, 1.0, True),
            ("head_l2", "--head-l2", 0.0, 10.0, True),
            ("dropout", "--dropout", 0.0, 0.95, True),
            ("label_smoothing", "--label-smoothing", 0.0, 0.99, True),
            ("imbalance_ratio", "imbalance_ratio", 1.0, 1e9, True),
        )
        for attr, opt, lo, hi, lo_ok in floats:
            v = getattr(self, attr)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or not (lo <= v if lo_ok else lo < v) or v > hi:
                bound = "between" if lo_ok else "greater than"
                rng = f"{lo} and {hi}" if lo_ok else f"{lo} and at most {hi}"
                raise UsageError(f"{opt} must be {bound} {rng}, got {v!r}")
        if self.fine_tune_lr is not None and not 0.0 < self.fine_tune_lr <= 10.0:
            raise UsageError(f"--fine-tune-lr must be greater than 0 and at most 10, got {self.fine_tune_lr!r}")
        if not 0.0 < self.val_split < 1.0:
            raise UsageError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split!r}")
        if self.unfreeze is not None and not 0 <= self.unfreeze <= 1000:
            raise UsageError(f"--unfreeze must be between 0 and 1000, got {self.unfreeze!r}")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise UsageError(f"--workers must be between 1 and 256, got {self.workers!r}")
        if self.image_size is not None:
            if (not isinstance(self.image_size, tuple) or len(self.image_size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.image_size)):
                raise UsageError(f"--image-size must be N or HxW (pixels), got {self.image_size!r}")
            from edgetl.models import get_spec

            get_spec(self.backbone).at_size(self.image_size)  # the backbone's size range
        from edgetl.imbalance import MODES
        from edgetl.metrics import OBJECTIVES
        from edgetl.preprocess import RESIZES

        if self.class_weights not in MODES:
            raise UsageError(f"--class-weights must be one of {', '.join(MODES)}, got {self.class_weights!r}")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.resize not in RESIZES:
            raise UsageError(f"--resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        from edgetl.embed import ENGINES

        if self.embed_engine not in ENGINES:
            raise UsageError(f"--embed-engine must be one of {', '.join(ENGINES)}, got {self.embed_engine!r}")
        self.augment.validate()
        return self

    @property
    def resolved_fine_tune_lr(self) -> float:
        return self.fine_tune_lr if self.fine_tune_lr is not None else self.lr * 0.1

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        data = Path(self.data_dir).resolve()
        return f"{data.name or 'data'}-{self.backbone}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("head_l2", 0.0)  # runs saved before head_l2 existed were trained without it (resume stays exact)
        kw.setdefault("resize", LEGACY_RESIZE)  # and before resize existed, with Pillow's bilinear
        kw.setdefault("objective", "accuracy")  # runs saved before the objective existed selected on val loss
        aug = kw.pop("augment", None)
        if isinstance(aug, dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            aug = {"resize": False, **aug}  # runs saved before resize-robust views had none
            kw["augment"] = AugmentConfig(**{k: v for k, v in aug.items() if k in aug_known})
        return cls(**kw)

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)
