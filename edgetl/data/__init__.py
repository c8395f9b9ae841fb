"""Image data: folders -> labelled file lists (:mod:`edgetl.data.folders`, no TensorFlow) and
in-memory arrays -> tf.data pipelines with the augmentation (:mod:`edgetl.data.tfdata`, TensorFlow
imported only inside its functions). ``from edgetl.data import X`` works for the names of both."""

from edgetl.data.folders import (
    SPLITS,
    DataChangedError,
    Dataset,
    Sample,
    Split,
    decode_paths,
    load_dataset,
    resize_views,
    scan_folder,
    split_changes,
    split_sha256,
    stratified_sample,
    summarize_skipped,
)
from edgetl.data.tfdata import Augmenter, build_augmenter, pixel_batches, pixels_dataset, training_dataset

__all__ = [
    "SPLITS", "Augmenter", "DataChangedError", "Dataset", "Sample", "Split", "build_augmenter", "decode_paths",
    "load_dataset", "pixel_batches", "pixels_dataset", "resize_views", "scan_folder", "split_changes", "split_sha256",
    "stratified_sample", "summarize_skipped", "training_dataset",
]
